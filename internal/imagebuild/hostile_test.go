package imagebuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/testutil"
)

// The hostile mirror: an archive whose Release is not signed by the
// suite's keyring, served over HTTP on loopback inside a network
// namespace of the test's own. Its only package is Essential and
// Priority required (a minbase bootstrap would install it) and its preinst
// and postinst would create a marker file. A build from it, as root and as
// an unprivileged uid, must fail naming the signature check, without ever
// fetching the package (or, unsigned, even the Packages index), and the
// marker must never appear.

// hostileArchive is the archive and its server.
type hostileArchive struct {
	url    string
	root   string
	marker string
	mu     sync.Mutex
	reqs   []string
	srv    *http.Server
}

// newHostileArchive builds the archive in a temp dir and serves it on
// 127.0.0.1. signWith, when set, is a GnuPG home whose key clearsigns the
// Release into InRelease (a key the pinned keyring does not hold).
func newHostileArchive(t *testing.T, signWith string) *hostileArchive {
	t.Helper()
	root := t.TempDir()
	os.Chmod(root, 0o755)
	a := &hostileArchive{root: root, marker: filepath.Join(root, "PAYLOAD-RAN")}

	// The package, its scripts writing the marker.
	pkg := filepath.Join(t.TempDir(), "evil")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkg, "usr/share/evil"), 0o755)
	os.WriteFile(filepath.Join(pkg, "usr/share/evil/README"), []byte("hostile\n"), 0o644)
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: evil\nVersion: 1.0\nArchitecture: amd64\nMaintainer: nobody <nobody@invalid>\n"+
		"Essential: yes\nPriority: required\nDescription: runs its scripts as whoever installs it\n"), 0o644)
	for _, s := range []string{"preinst", "postinst"} {
		script := fmt.Sprintf("#!/bin/sh\ntouch %s /PAYLOAD-RAN-%s\ncat /etc/shadow > /tmp/stolen 2>/dev/null\nexit 0\n", a.marker, s)
		os.WriteFile(filepath.Join(pkg, "DEBIAN", s), []byte(script), 0o755)
	}
	pool := filepath.Join(root, "pool/main/e/evil")
	os.MkdirAll(pool, 0o755)
	deb := filepath.Join(pool, "evil_1.0_amd64.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	debBytes, _ := os.ReadFile(deb)
	sum := sha256.Sum256(debBytes)
	packages := fmt.Sprintf("Package: evil\nEssential: yes\nPriority: required\nVersion: 1.0\nArchitecture: amd64\nMaintainer: nobody <nobody@invalid>\n"+
		"Filename: pool/main/e/evil/evil_1.0_amd64.deb\nSize: %d\nSHA256: %s\nDescription: runs its scripts as whoever installs it\n\n", len(debBytes), hex.EncodeToString(sum[:]))
	dist := filepath.Join(root, "dists", testSuite)
	os.MkdirAll(filepath.Join(dist, "main/binary-amd64"), 0o755)
	os.WriteFile(filepath.Join(dist, "main/binary-amd64/Packages"), []byte(packages), 0o644)
	psum := sha256.Sum256([]byte(packages))
	release := fmt.Sprintf("Origin: Debian\nLabel: Debian\nSuite: stable\nCodename: %s\nDate: %s\nValid-Until: %s\nArchitectures: amd64\nComponents: main\nSHA256:\n %s %d main/binary-amd64/Packages\n",
		testSuite, time.Now().UTC().Format(time.RFC1123), time.Now().Add(24*time.Hour).UTC().Format(time.RFC1123), hex.EncodeToString(psum[:]), len(packages))
	os.WriteFile(filepath.Join(dist, "Release"), []byte(release), 0o644)
	if signWith != "" {
		cmd := exec.Command("gpg", "--homedir", signWith, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
			"--clearsign", "--output", filepath.Join(dist, "InRelease"), filepath.Join(dist, "Release"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("signing InRelease: %v\n%s", err, out)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	files := http.FileServer(http.Dir(root))
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.reqs = append(a.reqs, r.URL.Path)
		a.mu.Unlock()
		files.ServeHTTP(w, r)
	})}
	go a.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.srv.Shutdown(ctx)
	})
	a.url = "http://" + ln.Addr().String() + "/"
	return a
}

func (a *hostileArchive) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.reqs...)
}

func (a *hostileArchive) reset() {
	a.mu.Lock()
	a.reqs = nil
	a.mu.Unlock()
}

// check fails t unless the build failed naming the signature check and
// the log, the payload never ran and no package (and, when noIndex, no
// Packages index) was fetched.
func (a *hostileArchive) check(t *testing.T, who, errText, log string, noIndex bool) {
	t.Helper()
	t.Logf("%s: %s", who, errText)
	t.Logf("%s: requests %q", who, a.requests())
	if !strings.Contains(errText, "the archive's signature check against keyring "+DebianKeyring+" failed") || !strings.Contains(errText, "build.log") {
		t.Errorf("%s: the error does not name the signature check and the log: %s\n%s", who, errText, tail(log, 4000))
	}
	if _, err := os.Stat(a.marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: the payload ran: %s exists", who, a.marker)
	}
	reqs := a.requests()
	if len(reqs) == 0 {
		t.Errorf("%s: no request reached the mirror: the test proves nothing", who)
	}
	for _, r := range reqs {
		if strings.HasSuffix(r, ".deb") || (noIndex && strings.Contains(r, "Packages")) {
			t.Errorf("%s: fetched %s from an archive that failed its signature check", who, r)
		}
	}
}

func TestHostileMirrorRoot(t *testing.T) {
	requireBuildTools(t)
	testutil.RequireTool(t, "dpkg-deb")
	if !testutil.InNetNS(t) {
		return
	}
	a := newHostileArchive(t, "")
	spec := Spec{Suite: testSuite, Mirror: a.url}

	// As root.
	out := t.TempDir()
	before := tempEntries(t)
	_, log, err := buildInto(t, out, spec, nil)
	if !errors.Is(err, ErrSignature) {
		t.Fatalf("root build from an unsigned archive: %v\n%s", err, tail(log, 4000))
	}
	a.check(t, "root", err.Error(), log, true)
	checkNoLeftovers(t, before)
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("left in the image dir after the failure: %v", ents)
	}

	// As an unprivileged uid (subordinate ids bound here: InNetNS's child
	// has a private mount namespace).
	a.reset()
	u := newUserBuild(t, spec)
	r, childOut := u.run(t, false)
	userLog, _ := os.ReadFile(filepath.Join(u.args.OutDir, "build.log"))
	if r.Error == "" {
		t.Fatalf("unprivileged build from an unsigned archive succeeded\n%s", childOut)
	}
	a.check(t, "uid 65534", r.Error, string(userLog), true)
	checkNoLeftovers(t, before)
}

// A Release signed by a key the host's apt trusts (in
// /etc/apt/trusted.gpg.d, bound over in this private mount namespace), but
// not the pinned keyring, is refused just the same: the pin is the only
// trust.
func TestHostTrustedKeyIsNotEnoughRoot(t *testing.T) {
	requireBuildTools(t)
	testutil.RequireTool(t, "dpkg-deb")
	testutil.RequireTool(t, "gpg")
	testutil.RequireTool(t, "gpgconf")
	if !testutil.InNetNS(t) {
		return
	}
	home := t.TempDir()
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run() })
	gen := exec.Command("gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
		"--quick-gen-key", "banger hostile archive <hostile@invalid>", "ed25519", "sign", "never")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("gpg key: %v\n%s", err, out)
	}
	trusted := t.TempDir()
	os.Chmod(trusted, 0o755)
	exp := exec.Command("gpg", "--homedir", home, "--batch", "--yes", "--output", filepath.Join(trusted, "hostile.gpg"), "--export", "hostile@invalid")
	if out, err := exp.CombinedOutput(); err != nil {
		t.Fatalf("gpg export: %v\n%s", err, out)
	}
	os.Chmod(filepath.Join(trusted, "hostile.gpg"), 0o644)
	if err := unix.Mount(trusted, "/etc/apt/trusted.gpg.d", "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("binding a trusted.gpg.d: %v", err)
	}
	defer unix.Unmount("/etc/apt/trusted.gpg.d", 0)
	a := newHostileArchive(t, home)

	// Control: the InRelease is validly signed by the key the host now
	// trusts, so the refusal below is the pin's doing.
	if out, err := exec.Command("gpgv", "--keyring", filepath.Join(trusted, "hostile.gpg"), filepath.Join(a.root, "dists", testSuite, "InRelease")).CombinedOutput(); err != nil {
		t.Fatalf("control: gpgv does not accept the InRelease with the host-trusted key: %v\n%s", err, out)
	}
	out := t.TempDir()
	_, log, err := buildInto(t, out, Spec{Suite: testSuite, Mirror: a.url}, nil)
	if !errors.Is(err, ErrSignature) {
		t.Fatalf("a build from an archive signed by a host-trusted key: %v\n%s", err, tail(log, 4000))
	}
	if !strings.Contains(log, "NO_PUBKEY") {
		t.Errorf("apt did not say the key is unknown:\n%s", tail(log, 4000))
	}
	a.check(t, "root", err.Error(), log, false)
}

// A suite whose keyring is not on the host is refused before any
// request: a table entry pointing at a missing file, and an Ubuntu
// codename where ubuntu-archive-keyring is not installed.
func TestNoKeyringNoRequestRoot(t *testing.T) {
	requireBuildTools(t)
	if !testutil.InNetNS(t) {
		return
	}
	a := newHostileArchive(t, "")
	cases := []struct {
		spec Spec
		k    Keyrings
	}{{Spec{Suite: testSuite, Mirror: a.url}, Keyrings{testSuite: filepath.Join(t.TempDir(), "missing.gpg")}}}
	if _, err := os.Stat(UbuntuKeyring); errors.Is(err, os.ErrNotExist) {
		cases = append(cases, struct {
			spec Spec
			k    Keyrings
		}{Spec{Suite: "noble", Mirror: a.url}, nil})
	} else {
		t.Logf("%s is installed: only the missing-file case runs", UbuntuKeyring)
	}
	for _, c := range cases {
		out := t.TempDir()
		logPath := filepath.Join(out, "build.log")
		logf, _ := os.Create(logPath)
		_, err := Build(context.Background(), c.spec, Options{OutDir: out, Log: logf, LogPath: logPath, Keyrings: c.k, Agent: testAgent(t)})
		logf.Close()
		if err == nil || !strings.Contains(err.Error(), "refusing to build without verifying the archive's signature") {
			t.Errorf("%s: %v", c.spec.Suite, err)
		}
		if ents, _ := os.ReadDir(out); len(ents) != 1 {
			t.Errorf("%s: files made: %v", c.spec.Suite, ents)
		}
	}
	// As the unprivileged uid too.
	u := newUserBuild(t, Spec{Suite: testSuite, Mirror: a.url})
	u.args.Keyring = Keyrings{testSuite: "/nonexistent/debian-archive-keyring.gpg"}
	r, _ := u.run(t, false)
	if !strings.Contains(r.Error, "refusing to build without verifying the archive's signature") {
		t.Errorf("uid 65534: %q", r.Error)
	}
	if reqs := a.requests(); len(reqs) != 0 {
		t.Errorf("requests reached the mirror: %q", reqs)
	}
}
