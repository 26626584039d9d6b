package daemon

import (
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/model"
)

func TestImageChecks(t *testing.T) {
	seed := "/img/work-seed.ext4"
	checks := imageChecks([]model.Image{
		{Name: "current", Source: "built", WorkSeedPath: seed, GuestContract: guest.Contract},
		{Name: "old", Source: "built", WorkSeedPath: seed, GuestContract: guest.ContractWorkDisk},
		{Name: "recovered", Source: "built", WorkSeedPath: seed}, // image.json from before the column: 0
		{Name: "imported", Source: "imported", WorkSeedPath: seed, GuestContract: guest.ContractWorkDisk},
		{Name: "seedless", Source: "built", GuestContract: guest.Contract},
	})
	got := map[string][]string{}
	for _, c := range checks {
		if c.Status != hostcheck.Warn || c.Hint == "" {
			t.Errorf("%s: %+v, want a warning with a hint", c.Name, c)
		}
		got[c.Name] = append(got[c.Name], c.Detail)
	}
	for name, want := range map[string]string{
		"image old":       "older banger",
		"image recovered": "older banger",
		"image seedless":  "no work-seed",
	} {
		if len(got[name]) != 1 || !strings.Contains(got[name][0], want) {
			t.Errorf("%s: %q, want one warning saying %q", name, got[name], want)
		}
	}
	for _, name := range []string{"image current", "image imported"} {
		if len(got[name]) != 0 {
			t.Errorf("%s: %q, want no warning (an imported image's contract is its own)", name, got[name])
		}
	}
}
