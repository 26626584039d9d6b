package agentd

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

type fileInfo struct {
	Type     string
	Mode     fs.FileMode
	Sum      string
	Link     string
	MTime    int64
	UID, GID uint32
}

// tree describes the files under root.
func tree(t testing.TB, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := fileInfo{Mode: fi.Mode(), MTime: fi.ModTime().UnixNano(), UID: st.Uid, GID: st.Gid}
		switch {
		case fi.Mode().IsRegular():
			e.Type = "file"
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			e.Sum = hex.EncodeToString(s[:])
		case fi.IsDir():
			e.Type = "dir"
		default:
			e.Type = "symlink"
			e.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, want, got map[string]fileInfo) {
	t.Helper()
	if len(want) != len(got) {
		t.Errorf("%d entries, want %d", len(got), len(want))
	}
	for p, w := range want {
		if g := got[p]; g != w {
			t.Errorf("%s:\n got  %+v\n want %+v", p, g, w)
		}
	}
}

// sampleTree makes files, modes, symlinks and directories to copy.
func sampleTree(t testing.TB, root string) {
	t.Helper()
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "ro"), 0o755) })
	for _, d := range []string{"sub/deep", "ro", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 5<<20)
	rand.Read(big)
	files := map[string]struct {
		data []byte
		mode fs.FileMode
	}{
		"a.txt": {[]byte("hello\n"), 0o644}, "run.sh": {[]byte("#!/bin/sh\n"), 0o755},
		"sub/big.bin": {big, 0o600}, "sub/deep/empty-file": {nil, 0o444}, "ro/inside": {[]byte("x"), 0o640},
	}
	for p, f := range files {
		if err := os.WriteFile(filepath.Join(root, p), f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, p), f.mode)
	}
	os.Symlink("../a.txt", filepath.Join(root, "sub", "link"))
	os.Symlink("/does/not/exist", filepath.Join(root, "dangling"))
	os.Chmod(filepath.Join(root, "ro"), 0o555)
	when := time.Date(2020, 1, 2, 3, 4, 5, 987654321, time.UTC)
	os.Chtimes(filepath.Join(root, "a.txt"), when, when)
	os.Chtimes(filepath.Join(root, "sub"), when, when.Add(time.Hour))
}

// The host side of vm cp both ways, over the session: a file and a tree.
func TestPutGet(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	local := t.TempDir()
	guest := t.TempDir()
	back := t.TempDir()
	t.Cleanup(func() {
		os.Chmod(filepath.Join(guest, "tree", "ro"), 0o755)
		os.Chmod(filepath.Join(back, "tree", "ro"), 0o755)
	})
	src := filepath.Join(local, "tree")
	sampleTree(t, src)

	// A file, under another name.
	var sent int64
	res, err := agent.CopyTo(testCtx(t), stream(t, s), filepath.Join(src, "sub", "big.bin"), guest, "big.copy", func(n int64) { sent = n })
	if err != nil || res.Files != 1 || res.Bytes != 5<<20 || sent < 5<<20 {
		t.Fatalf("put file: %+v %v (progress %d)", res, err, sent)
	}
	wantFile := tree(t, filepath.Join(src, "sub", "big.bin"))
	sameTree(t, wantFile, tree(t, filepath.Join(guest, "big.copy")))

	// A tree.
	res, err = agent.CopyTo(testCtx(t), stream(t, s), src, guest, "tree", nil)
	if err != nil || res.Files != 5 {
		t.Fatalf("put tree: %+v %v", res, err)
	}
	want := tree(t, src)
	sameTree(t, want, tree(t, filepath.Join(guest, "tree")))

	// And back.
	var got int64
	var gr agent.GetResult
	watch := func(r agent.GetResult) (func(int64), error) {
		gr = r
		return func(n int64) { got = n }, nil
	}
	pr, err := agent.CopyFrom(testCtx(t), stream(t, s), filepath.Join(guest, "tree"), back, "tree", watch)
	if err != nil || !gr.Dir || gr.Size != 5<<20+6+10+1 || got < gr.Size || pr.Files != 5 || pr.Bytes != gr.Size {
		t.Fatalf("get tree: %+v %+v %v (progress %d)", gr, pr, err, got)
	}
	sameTree(t, want, tree(t, filepath.Join(back, "tree")))
	pr, err = agent.CopyFrom(testCtx(t), stream(t, s), filepath.Join(guest, "big.copy"), back, "big.bin", watch)
	if err != nil || gr.Dir || gr.Size != 5<<20 || pr.Files != 1 {
		t.Fatalf("get file: %+v %+v %v", gr, pr, err)
	}
	// start's refusal: nothing is written.
	refuse := errors.New("no directories")
	_, err = agent.CopyFrom(testCtx(t), stream(t, s), filepath.Join(guest, "tree"), back, "refused", func(r agent.GetResult) (func(int64), error) {
		return nil, refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("a refused get: %v", err)
	}
	// The host's side failing is a LocalError naming where.
	_, err = agent.CopyFrom(testCtx(t), stream(t, s), filepath.Join(guest, "tree"), filepath.Join(back, "missing"), "tree", nil)
	var le *agent.LocalError
	if !errors.As(err, &le) || le.Path != filepath.Join(back, "missing", "tree") {
		t.Fatalf("get into a missing host directory: %v", err)
	}
	sameTree(t, wantFile, tree(t, filepath.Join(back, "big.bin")))
	assertOnly(t, guest, "big.copy", "tree")
	assertOnly(t, back, "big.bin", "tree")

	// stat sees them.
	for p, want := range map[string]agent.StatResult{
		filepath.Join(guest, "big.copy"):        {Exists: true, Mode: 0o600, Size: 5 << 20},
		filepath.Join(guest, "tree", "ro"):      {Exists: true, Dir: true, Mode: 0o555, Size: 4096},
		filepath.Join(guest, "missing"):         {},
		filepath.Join(guest, "big.copy", "sub"): {}, // through a file
	} {
		st, err := agent.Stat(testCtx(t), stream(t, s), p)
		if st.Dir && want.Dir {
			want.Size = st.Size // a directory's size is the filesystem's business
		}
		if err != nil || st != want {
			t.Errorf("stat %s: %+v %v, want %+v", p, st, err, want)
		}
	}
}

// As root, the agent keeps owners and setuid bits (root tier); out of the
// guest, the host keeps neither: the guest is not trusted with the host's
// users.
func TestPutGetOwnership(t *testing.T) {
	testutil.RequireRoot(t)
	srv, _ := newServer(t)
	s := startSession(t, srv)
	src := filepath.Join(t.TempDir(), "tree")
	sampleTree(t, src)
	for _, p := range []string{"a.txt", "sub", "sub/link", "ro/inside", "run.sh"} {
		if err := os.Lchown(filepath.Join(src, p), 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(src, "run.sh"), 0o755|fs.ModeSetuid|fs.ModeSetgid)
	guest, back := t.TempDir(), t.TempDir()
	t.Cleanup(func() {
		os.Chmod(filepath.Join(guest, "tree", "ro"), 0o755)
		os.Chmod(filepath.Join(back, "tree", "ro"), 0o755)
	})
	if _, err := agent.CopyTo(testCtx(t), stream(t, s), src, guest, "tree", nil); err != nil {
		t.Fatal(err)
	}
	want := tree(t, src)
	inGuest := tree(t, filepath.Join(guest, "tree"))
	sameTree(t, want, inGuest)
	if inGuest["sub/link"].UID != 65534 || inGuest["a.txt"].GID != 65534 || inGuest["run.sh"].Mode&fs.ModeSetuid == 0 {
		t.Errorf("the agent lost owners or setuid: %+v %+v %+v", inGuest["sub/link"], inGuest["a.txt"], inGuest["run.sh"])
	}

	if _, err := agent.CopyFrom(testCtx(t), stream(t, s), filepath.Join(guest, "tree"), back, "tree", nil); err != nil {
		t.Fatal(err)
	}
	for p, e := range want {
		e.UID, e.GID = 0, 0
		e.Mode &^= fs.ModeSetuid | fs.ModeSetgid
		want[p] = e
	}
	sameTree(t, want, tree(t, filepath.Join(back, "tree")))
}

// endless is a tar stream that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }

func rawTar(t *testing.T, entries ...tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range entries {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = "evil"
			h.Size = 4
		}
		h.Mode = 0o644
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	tw.Close()
	return b.Bytes()
}

func TestPutRefusals(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	guest := t.TempDir()
	outside := t.TempDir()
	os.Mkdir(filepath.Join(guest, "existing-dir"), 0o755)
	before := tree(t, outside)

	escapes := map[string][]tar.Header{
		"dotdot":          {{Name: "x/", Typeflag: tar.TypeDir}, {Name: "x/../../escaped", Typeflag: tar.TypeReg}},
		"absolute":        {{Name: "x/", Typeflag: tar.TypeDir}, {Name: outside + "/abs", Typeflag: tar.TypeReg}},
		"through-symlink": {{Name: "x/", Typeflag: tar.TypeDir}, {Name: "x/l", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "x/l/evil", Typeflag: tar.TypeReg}},
	}
	for name, entries := range escapes {
		_, err := agent.Put(testCtx(t), stream(t, s), guest, "x", bytes.NewReader(rawTar(t, entries...)))
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%s: %v, want bad_request", name, err)
		}
	}
	sameTree(t, before, tree(t, outside))
	if _, err := os.Lstat(filepath.Join(filepath.Dir(guest), "escaped")); err == nil {
		t.Error("an entry escaped")
	}

	// Refusals that come before the tar: Put returns although its tar
	// never ends.
	for _, c := range []struct {
		dir, name string
		want      error
	}{
		{filepath.Join(guest, "missing"), "x", rpc.ErrNotFound},
		{guest, "existing-dir", rpc.ErrConflict},
		{guest, "../x", rpc.ErrBadRequest},
	} {
		if _, err := agent.Put(testCtx(t), stream(t, s), c.dir, c.name, endless{}); !errors.Is(err, c.want) {
			t.Errorf("put %s/%s: %v, want %v", c.dir, c.name, err, c.want)
		}
	}
	assertOnly(t, guest, "existing-dir")

	// A tar the host cannot finish reading: nothing is left either.
	failing := io.MultiReader(bytes.NewReader(rawTar(t, tar.Header{Name: "y/", Typeflag: tar.TypeDir})[:512]), &failReader{})
	if _, err := agent.Put(testCtx(t), stream(t, s), guest, "y", failing); err == nil || !errors.Is(err, errDisk) {
		t.Errorf("a failing local tar: %v", err)
	}
	// The agent has seen the stream end without the tar's end: wait for it
	// to clean up.
	deadline := time.Now().Add(testTimeout)
	for len(dirNames(t, guest)) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assertOnly(t, guest, "existing-dir")
	// The session is still fine.
	if _, err := agent.Hello(testCtx(t), stream(t, s)); err != nil {
		t.Fatal(err)
	}
}

var errDisk = errors.New("local disk failed")

type failReader struct{}

func (*failReader) Read([]byte) (int, error) { return 0, errDisk }

func TestGetMissing(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	called := false
	err := agent.Get(testCtx(t), stream(t, s), "/no/such/path", func(agent.GetResult) (io.Writer, error) { called = true; return io.Discard, nil })
	if !errors.Is(err, rpc.ErrNotFound) || called {
		t.Errorf("get of a missing path: %v (out called %v)", err, called)
	}
	back := t.TempDir()
	if _, err := agent.CopyFrom(testCtx(t), stream(t, s), "/etc/passwd/x", back, "x", nil); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("get through a file: %v", err)
	}
	assertOnly(t, back)
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// assertOnly fails unless dir holds exactly names.
func assertOnly(t testing.TB, dir string, names ...string) {
	t.Helper()
	if got := dirNames(t, dir); !slices.Equal(got, names) {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}
