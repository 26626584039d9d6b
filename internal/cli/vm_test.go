package cli

import (
	"os/exec"
	"testing"
)

func TestRemoteCommandKeepsWords(t *testing.T) {
	cases := map[string][]string{
		"cat /etc/hostname":                {"cat", "/etc/hostname"},
		`sh -c 'exit 7'`:                   {"sh", "-c", "exit 7"},
		`echo 'it'"'"'s' '$HOME' ''`:       {"echo", "it's", "$HOME", ""},
		"ls | wc -l":                       {"ls | wc -l"},
		`printf '%s\n' 'a b' 'c;d' '$(x)'`: {"printf", `%s\n`, "a b", "c;d", "$(x)"},
	}
	for want, words := range cases {
		if got := remoteCommand(words); got != want {
			t.Errorf("%q: got %s, want %s", words, got, want)
		}
	}
	// A real shell splits the quoted form back into the same words.
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	words := []string{"printf", `[%s]`, "a b", "it's", "$(echo no)", "`x`", ""}
	out, err := exec.Command("sh", "-c", remoteCommand(words)).Output()
	if err != nil || string(out) != "[a b][it's][$(echo no)][`x`][]" {
		t.Fatalf("round trip: %q %v", out, err)
	}
}
