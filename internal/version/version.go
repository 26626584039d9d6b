// Package version is the release string of every banger binary. The
// Makefile sets Version with -ldflags; a plain `go build` reports the VCS
// revision Go embedded, or "dev".
package version

import "runtime/debug"

// Version is set at link time: -ldflags "-X github.com/banger-dev/banger/internal/version.Version=v0.1.0".
var Version = ""

// String returns the release string.
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			return "dev-" + rev + dirty
		}
	}
	return "dev"
}
