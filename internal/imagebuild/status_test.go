package imagebuild

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/rpc"
)

func TestReadStatus(t *testing.T) {
	good := `{"stage":"configure"}
{"stage":"pack","kernel_version":"6.1.0-9-cloud-amd64","initrd":"mini"}
{"done":true,"kernel_version":"6.1.0-9-cloud-amd64","initrd":"mini","rootfs_size":1,"work_seed_size":2}
`
	var events []Event
	r := readStatus(strings.NewReader(good), func(e Event) { events = append(events, e) })
	if r.err != nil || r.failure != nil || r.done == nil || r.done.RootfsSize != 1 || len(events) != 2 || events[1].KernelVersion != "6.1.0-9-cloud-amd64" {
		t.Errorf("good: %+v %+v", r, events)
	}
	r = readStatus(strings.NewReader(`{"stage":"configure"}`+"\n"+`{"stage":"configure","error":"finding the kernel: none"}`+"\n"), nil)
	if r.failure == nil || r.failure.Error != "finding the kernel: none" || r.err != nil {
		t.Errorf("failure: %+v", r)
	}
	for name, in := range map[string]string{
		"out of order":       `{"stage":"pack","kernel_version":"6.1"}` + "\n",
		"done early":         `{"stage":"configure"}` + "\n" + `{"done":true,"kernel_version":"6.1","initrd":"mini"}` + "\n",
		"not json":           "hello\n",
		"bad kernel":         `{"stage":"configure"}` + "\n" + `{"stage":"pack","kernel_version":"../../x"}` + "\n",
		"bad initrd":         strings.Replace(good, `"initrd":"mini","rootfs`, `"initrd":"other","rootfs`, 1),
		"after the end":      good + `{"stage":"configure"}` + "\n",
		"unknown stage":      `{"stage":"bootstrap"}` + "\n",
		"a line over 64 KiB": `{"stage":"` + strings.Repeat("x", 70<<10) + `"}` + "\n",
	} {
		if r := readStatus(strings.NewReader(in), nil); r.err == nil {
			t.Errorf("%s: accepted: %+v", name, r)
		}
	}
}

func TestClassify(t *testing.T) {
	const log, keyring, mirror = "/state/images/x/build.log", DebianKeyring, "http://10.0.0.1/debian"
	runErr := errors.New("exit status 1")
	for name, out := range map[string]string{
		"unsigned":   "Ign:1 http://10.0.0.1/debian bookworm InRelease\nGet:2 http://10.0.0.1/debian bookworm Release [1234 B]\nIgn:3 http://10.0.0.1/debian bookworm Release.gpg\nE: The repository 'http://10.0.0.1/debian bookworm Release' is not signed.\nE: apt-get update -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed\n",
		"no pubkey":  "W: GPG error: http://10.0.0.1/debian bookworm InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 0123456789ABCDEF\nE: The repository 'http://10.0.0.1/debian bookworm InRelease' is not signed.\n",
		"bad sig":    "Err:1 http://10.0.0.1/debian bookworm InRelease\n  The following signatures were invalid: BADSIG 0123456789ABCDEF Debian Archive\n",
		"no release": "E: The repository 'http://10.0.0.1/debian bookworm Release' does not have a Release file.\n",
		"clearsign":  "E: Clearsigned file isn't valid, got 'NOSPLIT' (does the network require authentication?)\n",
	} {
		err := classify(runErr, "I: running apt-get update...\n"+out+"E: mmdebstrap failed to run\n", log, keyring, mirror, "alice")
		// bad_request: the mirror or the suite is wrong; a retry is no use.
		if !errors.Is(err, ErrSignature) || rpc.CodeOf(err) != rpc.CodeBadRequest {
			t.Errorf("%s: %v", name, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "signature check against keyring "+keyring+" failed") || !strings.Contains(msg, log) || !strings.Contains(msg, mirror) {
			t.Errorf("%s: message %q", name, msg)
		}
	}

	err := classify(runErr, "W: no entry in /etc/subuid for alice\nE: invalid idmap\n", log, keyring, mirror, "alice")
	if !errors.Is(err, ErrNoSubIDs) || !strings.Contains(err.Error(), "/etc/subuid") || !strings.Contains(err.Error(), log) ||
		rpc.HintOf(err) != "give it one: sudo banger system install --user alice" {
		t.Errorf("subuid: %v (hint %q)", err, rpc.HintOf(err))
	}
	err = classify(runErr, "sh: 1: newuidmap: not found\nE: newuidmap 1234 0 100000 65536 failed: No such file or directory\n", log, keyring, mirror, "alice")
	if !errors.Is(err, ErrMissingTool) || rpc.HintOf(err) != "install them: sudo apt-get install mmdebstrap uidmap" || !strings.Contains(err.Error(), log) {
		t.Errorf("newuidmap: %v (hint %q)", err, rpc.HintOf(err))
	}
	err = classify(runErr, "Err:1 http://10.0.0.1/debian bookworm InRelease\n  Could not connect to 10.0.0.1:80\nE: apt-get update failed\nE: mmdebstrap failed to run\n", log, keyring, mirror, "alice")
	if errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "apt-get update failed") || !strings.Contains(err.Error(), log) {
		t.Errorf("generic: %v", err)
	}
}

// The hook's socket: only a peer with the hook's uid and the token gets
// the files; the status comes back on the same connection. Real sockets,
// both ends in this process.
func TestHookSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "hook.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := createOutputs(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer outs.close()
	var log strings.Builder
	var events []Event
	token := strings.Repeat("ab", 16)
	hc := &hookConn{ln: ln, token: token, uid: uint32(os.Getuid()), files: outs.files, onStage: func(e Event) { events = append(events, e) }, log: &log}
	res := make(chan statusResult, 1)
	go func() { res <- hc.serve() }()

	// A wrong token: turned away, the listener keeps waiting.
	if _, _, err := dialBuild(sock, strings.Repeat("cd", 16)); err == nil {
		t.Fatal("a wrong token got the files")
	}
	conn, files, err := dialBuild(sock, token)
	if err != nil {
		t.Fatalf("the right token: %v (log %s)", err, log.String())
	}
	if len(files) != len(outNames) {
		t.Fatalf("%d files", len(files))
	}
	// The files are the build's: a write through the passed descriptor
	// lands in the daemon's file.
	files[2].WriteString("kernel bytes")
	if b, _ := os.ReadFile(filepath.Join(dir, OutKernel)); string(b) != "kernel bytes" {
		t.Errorf("vmlinuz holds %q", b)
	}
	st := &statusWriter{w: conn}
	st.send(status{Stage: "configure"})
	st.send(status{Stage: "pack", KernelVersion: testKver, Initrd: InitrdMini})
	st.send(status{Done: true, KernelVersion: testKver, Initrd: InitrdMini, RootfsSize: 5, WorkSeedSize: 6})
	conn.Close()
	select {
	case r := <-res:
		if r.err != nil || r.done == nil || r.done.WorkSeedSize != 6 || len(events) != 2 {
			t.Errorf("status %+v, events %+v", r, events)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not end")
	}
	if !strings.Contains(log.String(), "did not send the token") {
		t.Errorf("the refusal is not logged: %q", log.String())
	}
	// One hook per build: the socket is gone.
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there: %v", err)
	}

	// Another uid than the hook's is refused before it may send anything.
	ln2, _ := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	hc2 := &hookConn{ln: ln2, token: token, uid: uint32(os.Getuid()) + 1, files: outs.files, log: &log}
	go hc2.serve()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "%s\n", token)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil || line != "" {
		t.Errorf("a foreign uid got %q (%v)", line, err)
	}
	c.Close()
	ln2.Close()
	if !strings.Contains(log.String(), fmt.Sprintf("peer uid %d", os.Getuid())) {
		t.Errorf("the foreign uid is not logged: %q", log.String())
	}
}

// The output files are made anew, never over an existing file or through
// a symlink, and removed again after a failure.
func TestCreateOutputs(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)
	os.Symlink(victim, filepath.Join(dir, OutKernel))
	if _, err := createOutputs(dir); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("over a symlink: %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("victim %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("left after the refusal: %v", ents)
	}
	os.Remove(filepath.Join(dir, OutKernel))
	o, err := createOutputs(dir)
	if err != nil {
		t.Fatal(err)
	}
	// 0600 while building, as root or as a user (they used to be 0666 for
	// a user, for commands that reopened them as a subordinate uid).
	for _, f := range o.files {
		if fi, _ := f.Stat(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600 while building", f.Name(), fi.Mode())
		}
	}
	if _, err := o.finish(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("finish of empty files: %v", err)
	}
	o.remove()
	o.close()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left after remove: %v", ents)
	}
}

// An output file linked elsewhere during the build (a process of the
// build could do it through /proc/self/fd/N: linkat with
// AT_SYMLINK_FOLLOW) fails the build at finish: the link would let
// whoever reaches it read or write the image. It stays 0600.
func TestFinishRefusesLinkedOutputs(t *testing.T) {
	dir := t.TempDir()
	o, err := createOutputs(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	for _, f := range o.files {
		f.Write([]byte("image"))
	}
	elsewhere := filepath.Join(t.TempDir(), "stolen")
	if err := os.Link(filepath.Join(dir, OutRootfs), elsewhere); err != nil {
		t.Fatal(err)
	}
	_, err = o.finish()
	if err == nil || !strings.Contains(err.Error(), "rootfs.ext4 has 2 links, want 1") || rpc.HintOf(err) == "" {
		t.Fatalf("finish with a linked output: %v (hint %q)", err, rpc.HintOf(err))
	}
	if fi, _ := os.Stat(elsewhere); fi.Mode().Perm() != 0o600 {
		t.Errorf("the linked file became %v", fi.Mode())
	}
	os.Remove(elsewhere)
	if sizes, err := o.finish(); err != nil || len(sizes) != len(outNames) {
		t.Errorf("finish after the link went: %v, %v", sizes, err)
	}
}
