package imagebuild

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/banger-dev/banger/internal/rpc"
)

// Kinds of build failure a caller may test with errors.Is. Each error also
// wraps an rpc sentinel, so it maps to a wire code.
var (
	// ErrSignature: the archive's Release file is not signed by the pinned
	// keyring (unsigned, unknown key, bad signature, no Release at all).
	// It is bad_request: the mirror or the suite is wrong, and retrying
	// does not help.
	ErrSignature = errors.New("archive signature check failed")
	// ErrNoSubIDs: the daemon's user has no subordinate id range, or the
	// kernel refuses it user namespaces.
	ErrNoSubIDs = errors.New("no subordinate ids for an unprivileged build")
	// ErrMissingTool: mmdebstrap, newuidmap or another build tool is not
	// installed.
	ErrMissingTool = errors.New("build tool missing")
)

// buildError is an error with its own message that wraps its kinds.
type buildError struct {
	msg   string
	kinds []error
}

func (e *buildError) Error() string   { return e.msg }
func (e *buildError) Unwrap() []error { return e.kinds }

func newError(msg string, kinds ...error) error { return &buildError{msg: msg, kinds: kinds} }

// installHint is the next step when mmdebstrap or newuidmap is missing.
const installHint = "install them: sudo apt-get install mmdebstrap uidmap"

// signaturePatterns are apt's words for an archive it cannot verify:
// unsigned (no InRelease, no Release.gpg), signed by a key not in the
// keyring, a bad or expired signature, a clearsigned file that is not, no
// Release file at all (apt then has nothing signed to trust).
var signaturePatterns = regexp.MustCompile(`(?m)^.*(is not signed|NO_PUBKEY|The following signatures couldn't be verified|` +
	`The following signatures were invalid|EXPKEYSIG|REVKEYSIG|BADSIG|does not have a Release file|` +
	`Clearsigned file isn't valid|Splitting up .* into data and signature failed|` +
	`At least one invalid signature was encountered|is no longer signed|GPG error|Signed file isn't valid).*$`)

// subidPatterns are mmdebstrap's and newuidmap's words for a user without
// a usable subordinate id range.
var subidPatterns = regexp.MustCompile(`(?m)^.*(/etc/sub[ug]id|newuidmap: |newgidmap: |invalid idmap|unshare\(\) failed).*$`)

// missingToolPatterns: newuidmap or newgidmap not installed.
var missingToolPatterns = regexp.MustCompile(`(?m)^.*(newuidmap|newgidmap).*(not found|No such file).*$`)

// classify turns mmdebstrap's failure (runErr, with the build's part of
// the log) into the error a user can act on. Every one names the log.
func classify(runErr error, log, logPath, keyring, mirror, user string) error {
	if m := signaturePatterns.FindString(log); m != "" {
		return rpc.WithHint(newError(fmt.Sprintf("the archive's signature check against keyring %s failed: apt said %q; nothing from %s was installed (full output in %s)",
			keyring, strings.TrimSpace(m), mirror, logPath), ErrSignature, rpc.ErrBadRequest),
			"use a mirror of the suite's real archive, signed by the keys in "+keyring+", or the suite that keyring is for (see the build log); retrying the same does not help")
	}
	if m := missingToolPatterns.FindString(log); m != "" {
		return rpc.WithHint(newError(fmt.Sprintf("mmdebstrap could not map ids: %q (full output in %s)", strings.TrimSpace(m), logPath), ErrMissingTool, rpc.ErrUnavailable), installHint)
	}
	if m := subidPatterns.FindString(log); m != "" {
		return rpc.WithHint(newError(fmt.Sprintf("mmdebstrap could not set up its user namespace: %q: the user %s needs a range of subordinate ids in /etc/subuid and /etc/subgid (full output in %s)",
			strings.TrimSpace(m), user, logPath), ErrNoSubIDs, rpc.ErrUnavailable), subidHint(user))
	}
	return fmt.Errorf("mmdebstrap failed (%v): %s (full output in %s)", runErr, lastError(log), logPath)
}

func subidHint(user string) string {
	if user == "" {
		user = "$USER"
	}
	return "give it one: sudo banger system install --user " + user
}

// lastError is the last "E: " line of mmdebstrap's or apt's output, else
// the last line.
func lastError(log string) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	for i := len(lines) - 1; i >= 0 && i >= len(lines)-200; i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, "E: ") && !strings.Contains(l, "mmdebstrap failed to run") {
			return strings.TrimPrefix(l, "E: ")
		}
	}
	if len(lines) == 0 {
		return "no output"
	}
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = l[:300] + "..."
	}
	return l
}
