package agent

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

type unixTimespec = unix.Timespec

func omit() unix.Timespec          { return unix.Timespec{Nsec: unix.UTIME_OMIT} }
func at(t time.Time) unix.Timespec { return unix.NsecToTimespec(t.UnixNano()) }
func utimes(p string, ts []unix.Timespec) error {
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// TreeEntry describes one file of a tree, for comparisons.
type treeEntry struct {
	Type  string
	Mode  fs.FileMode
	Size  int64
	Sum   string
	Link  string
	MTime int64
	UID   uint32
	GID   uint32
}

// snapshot describes the tree at root, keyed by path relative to root.
func snapshot(t testing.TB, root string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		e := treeEntry{Mode: fi.Mode(), MTime: fi.ModTime().UnixNano(), UID: st.Uid, GID: st.Gid}
		switch {
		case fi.Mode().IsRegular():
			e.Type, e.Size = "file", fi.Size()
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			e.Sum = hex.EncodeToString(s[:])
		case fi.IsDir():
			e.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Type = "symlink"
			e.Link, _ = os.Readlink(p)
		default:
			e.Type = "other"
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writableOnCleanup makes the directories under root writable before the
// temporary directories are removed (a read-only one would stop RemoveAll
// when the tests do not run as root).
func writableOnCleanup(t testing.TB, root string) {
	t.Cleanup(func() {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

// makeTree builds a small tree with the cases a copy must keep.
func makeTree(t testing.TB, root string) {
	t.Helper()
	writableOnCleanup(t, root)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub", "deep"), 0o755))
	must(os.Mkdir(filepath.Join(root, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(root, "a.txt"), []byte("hello\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "run.sh"), []byte("#!/bin/sh\necho run\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "secret"), []byte("s"), 0o600))
	big := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB
	must(os.WriteFile(filepath.Join(root, "sub", "big.bin"), big, 0o640))
	must(os.WriteFile(filepath.Join(root, "sub", "deep", "leaf"), nil, 0o444))
	must(os.Symlink("../a.txt", filepath.Join(root, "sub", "rel-link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	must(os.Symlink("sub", filepath.Join(root, "dirlink")))
	must(os.Chmod(filepath.Join(root, "sub", "deep"), 0o555))
	must(os.Chmod(filepath.Join(root, "empty"), 0o750|fs.ModeSetgid)) // kept
	// Distinct mtimes, to the nanosecond, on files, directories and links.
	when := time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)
	i := 0
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		i++
		ts := []unixTimespec{omit(), at(when.Add(time.Duration(i) * time.Hour))}
		return utimes(p, ts)
	})
	// The root's own mtime last: its entries' changes moved it.
	must(utimes(root, []unixTimespec{omit(), at(when)}))
}

func TestTarRoundTripTree(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)
	var buf bytes.Buffer
	if err := WriteTar(&buf, src, "copy"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	writableOnCleanup(t, dst)
	files, n, err := ExtractTar(&buf, dst, "copy")
	if err != nil {
		t.Fatal(err)
	}
	if files != 5 || n != 6+19+1+4_800_000 {
		t.Errorf("extracted %d files, %d bytes", files, n)
	}
	compareTrees(t, snapshot(t, src), snapshot(t, filepath.Join(dst, "copy")), os.Geteuid() == 0)
	if entries, _ := os.ReadDir(dst); len(entries) != 1 {
		t.Errorf("dst holds %v, want only copy", entries)
	}
	dir, size, err := TreeSize(src)
	if err != nil || !dir || size != n {
		t.Errorf("TreeSize %v %d %v", dir, size, err)
	}
}

func compareTrees(t *testing.T, want, got map[string]treeEntry, owners bool) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		if !owners {
			g.UID, g.GID, w.UID, w.GID = 0, 0, 0, 0
		}
		if g != w {
			t.Errorf("%s:\n got  %+v\n want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

func TestTarFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "f")
	os.WriteFile(src, []byte("content"), 0o751)
	link := filepath.Join(dir, "link-to-f")
	os.Symlink("f", link)
	var buf bytes.Buffer
	// A symlink at the top is followed.
	if err := WriteTar(&buf, link, "g"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "g"), []byte("old"), 0o600) // replaced
	if files, n, err := ExtractTar(bytes.NewReader(buf.Bytes()), dst, "g"); err != nil || files != 1 || n != 7 {
		t.Fatal(files, n, err)
	}
	b, _ := os.ReadFile(filepath.Join(dst, "g"))
	fi, _ := os.Lstat(filepath.Join(dst, "g"))
	if string(b) != "content" || fi.Mode() != 0o751 {
		t.Errorf("g: %q %v", b, fi.Mode())
	}
	if dir, size, err := TreeSize(link); err != nil || dir || size != 7 {
		t.Errorf("TreeSize %v %d %v", dir, size, err)
	}

	// An existing directory of that name is a conflict, checked before
	// anything is read, and a directory onto a file is one too.
	os.Mkdir(filepath.Join(dst, "d"), 0o755)
	if _, _, err := ExtractTar(strings.NewReader("not even a tar"), dst, "d"); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("onto a directory: %v", err)
	}
	var tree bytes.Buffer
	os.Mkdir(filepath.Join(dir, "t"), 0o755)
	WriteTar(&tree, filepath.Join(dir, "t"), "g")
	if _, _, err := ExtractTar(&tree, dst, "g"); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("a directory onto a file: %v", err)
	}
	if _, _, err := ExtractTar(bytes.NewReader(buf.Bytes()), filepath.Join(dst, "missing"), "g"); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("into a missing directory: %v", err)
	}
	if _, _, err := ExtractTar(bytes.NewReader(buf.Bytes()), filepath.Join(dst, "g"), "g"); !errors.Is(err, rpc.ErrBadRequest) {
		t.Errorf("into a file: %v", err)
	}
	if err := WriteTar(io.Discard, filepath.Join(dir, "nope"), "x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing source: %v", err)
	}
	assertOnly(t, dst, "d", "g")
}

// assertOnly fails unless dir holds exactly names (no temporary left).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

type entry struct {
	name, link string
	typ        byte
	body       string
}

func makeTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(1e9, 0)}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	before := snapshot(t, outside)
	dir := entry{name: "x/", typ: tar.TypeDir}
	cases := map[string][]entry{
		"dotdot":          {dir, {name: "x/../../escaped", typ: tar.TypeReg, body: "!"}},
		"dotdot-top":      {{name: "../x", typ: tar.TypeReg, body: "!"}},
		"absolute":        {dir, {name: outside + "/abs", typ: tar.TypeReg, body: "!"}},
		"through-symlink": {dir, {name: "x/link", typ: tar.TypeSymlink, link: outside}, {name: "x/link/evil", typ: tar.TypeReg, body: "!"}},
		"symlink-top":     {{name: "x", typ: tar.TypeSymlink, link: outside}, {name: "x/evil", typ: tar.TypeReg, body: "!"}},
		"under-a-file":    {{name: "x", typ: tar.TypeReg, body: "f"}, {name: "x/y", typ: tar.TypeReg, body: "!"}},
		"not-under-name":  {dir, {name: "y", typ: tar.TypeReg, body: "!"}},
		"first-not-name":  {{name: "x/a", typ: tar.TypeReg, body: "!"}},
		"no-parent":       {dir, {name: "x/missing/a", typ: tar.TypeReg, body: "!"}},
		"duplicate":       {dir, {name: "x/a", typ: tar.TypeReg, body: "1"}, {name: "x/a", typ: tar.TypeSymlink, link: outside}},
		"hardlink":        {dir, {name: "x/h", typ: tar.TypeLink, link: "/etc/passwd"}},
		"device":          {dir, {name: "x/dev", typ: tar.TypeChar}},
		"unclean":         {dir, {name: "x/./a", typ: tar.TypeReg, body: "!"}},
		"empty":           {},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			dst := t.TempDir()
			_, _, err := ExtractTar(bytes.NewReader(makeTar(t, entries...)), dst, "x")
			if !errors.Is(err, rpc.ErrBadRequest) {
				t.Errorf("accepted or wrong error: %v", err)
			}
			assertOnly(t, dst)
			compareTrees(t, before, snapshot(t, outside), true)
			if _, err := os.Lstat(filepath.Join(filepath.Dir(dst), "escaped")); err == nil {
				t.Error("an entry escaped")
			}
		})
	}
}

func TestExtractTarCommitsOnlyAtCleanEOF(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)
	var buf bytes.Buffer
	WriteTar(&buf, src, "tree")
	whole := buf.Bytes()

	// Cut inside the big file.
	dst := t.TempDir()
	if _, _, err := ExtractTar(bytes.NewReader(whole[:len(whole)/2]), dst, "tree"); err == nil {
		t.Error("a truncated tar was accepted")
	}
	assertOnly(t, dst)

	// The whole tar, then the sender reports a failure (get's last answer
	// was an error): nothing is committed.
	pr, pw := io.Pipe()
	go func() {
		pw.Write(whole)
		pw.CloseWithError(errors.New("the agent said the tar is incomplete"))
	}()
	if _, _, err := ExtractTar(pr, dst, "tree"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("got %v", err)
	}
	assertOnly(t, dst)

	// A bad entry after good ones leaves nothing either.
	bad := makeTar(t, entry{name: "tree/", typ: tar.TypeDir}, entry{name: "tree/ro/", typ: tar.TypeDir},
		entry{name: "tree/ro/f", typ: tar.TypeReg, body: "data"}, entry{name: "../evil", typ: tar.TypeReg})
	if _, _, err := ExtractTar(bytes.NewReader(bad), dst, "tree"); !errors.Is(err, rpc.ErrBadRequest) {
		t.Errorf("got %v", err)
	}
	assertOnly(t, dst)
}

// As root, numeric owners are kept both ways (root tier).
func TestTarOwnership(t *testing.T) {
	testutil.RequireRoot(t)
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)
	for _, p := range []string{"a.txt", "sub", "sub/rel-link"} {
		if err := os.Lchown(filepath.Join(src, p), 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	// Setuid survives the chown on the receiving end.
	os.Lchown(filepath.Join(src, "run.sh"), 65534, 0)
	os.Chmod(filepath.Join(src, "run.sh"), 0o755|fs.ModeSetuid)
	var buf bytes.Buffer
	if err := WriteTar(&buf, src, "tree"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	writableOnCleanup(t, dst)
	if _, _, err := ExtractTar(&buf, dst, "tree"); err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, filepath.Join(dst, "tree"))
	compareTrees(t, snapshot(t, src), got, true)
	if got["a.txt"].UID != 65534 || got["sub/rel-link"].GID != 65534 || got["run.sh"].Mode&fs.ModeSetuid == 0 {
		t.Errorf("owners or setuid lost: %+v %+v %+v", got["a.txt"], got["sub/rel-link"], got["run.sh"])
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "a.b", ".hidden", "with space", "ünï"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/a", "a\x00"} {
		if err := CheckName(bad); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := WriteTar(io.Discard, t.TempDir(), "a/b"); !errors.Is(err, rpc.ErrBadRequest) {
		t.Errorf("WriteTar with a bad name: %v", err)
	}
}

// FuzzExtractTar feeds arbitrary bytes to ExtractTar: whatever it accepts
// or refuses, nothing appears outside dir/x, and a refusal leaves dir
// empty.
func FuzzExtractTar(f *testing.F) {
	seedTar := func(entries ...entry) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body))}
			tw.WriteHeader(hdr)
			io.WriteString(tw, e.body)
		}
		tw.Close()
		return buf.Bytes()
	}
	f.Add(seedTar(entry{name: "x", typ: tar.TypeReg, body: "data"}))
	f.Add(seedTar(entry{name: "x/", typ: tar.TypeDir}, entry{name: "x/a", typ: tar.TypeReg, body: "a"},
		entry{name: "x/l", typ: tar.TypeSymlink, link: "../.."}, entry{name: "x/l/b", typ: tar.TypeReg, body: "b"}))
	f.Add(seedTar(entry{name: "x/", typ: tar.TypeDir}, entry{name: "x/../y", typ: tar.TypeReg, body: "y"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "dir")
		os.Mkdir(dir, 0o755)
		writableOnCleanup(t, root)
		_, _, err := ExtractTar(bytes.NewReader(data), dir, "x")
		entries, _ := os.ReadDir(root)
		if len(entries) != 1 {
			t.Fatalf("%d entries beside dir", len(entries)-1)
		}
		inside, _ := os.ReadDir(dir)
		switch {
		case err != nil && len(inside) != 0:
			t.Fatalf("refused (%v) but left %v", err, inside)
		case err == nil && (len(inside) != 1 || inside[0].Name() != "x"):
			t.Fatalf("accepted, dir holds %v", inside)
		}
	})
}

// paxRecord formats one PAX record ("LEN key=value\n", LEN counting
// itself).
func paxRecord(k, v string) string {
	s := " " + k + "=" + v + "\n"
	for n := len(s) + 1; ; n++ {
		if l := len(strconv.Itoa(n)); l+len(s) == n {
			return strconv.Itoa(n) + s
		}
	}
}

// sparseBomb is a tar of 2.5 KB whose only file reads as 64 MiB of zeros
// (GNU sparse 1.0 in PAX records, which tar.Writer does not write); the
// realsize could as well be a terabyte.
func sparseBomb(t *testing.T) []byte {
	recs := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") + paxRecord("GNU.sparse.name", "x") +
		paxRecord("GNU.sparse.realsize", "67108864")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "PaxHeaders/x", Typeflag: tar.TypeReg, Size: int64(len(recs)), Mode: 0o644, Format: tar.FormatUSTAR})
	io.WriteString(tw, recs)
	m := "1\n67108863\n1\n" // the map: one data region of 1 byte at the end
	data := append(append([]byte(m), make([]byte, 512-len(m))...), 'z')
	tw.WriteHeader(&tar.Header{Name: "x", Typeflag: tar.TypeReg, Size: int64(len(data)), Mode: 0o644, Format: tar.FormatUSTAR})
	tw.Write(data)
	tw.Close()
	b := buf.Bytes()
	// Turn the first header into a PAX extended header: type 'x', new
	// checksum.
	b[156] = tar.TypeXHeader
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	// The bomb is real: the reader hands out the 64 MiB.
	tr := tar.NewReader(bytes.NewReader(b))
	if h, err := tr.Next(); err != nil || h.Size != 64<<20 {
		t.Fatalf("the sparse tar reads as %v, %v", h, err)
	}
	if n, err := io.Copy(io.Discard, tr); err != nil || n != 64<<20 {
		t.Fatalf("the sparse file reads as %d bytes, %v", n, err)
	}
	return b
}

func TestExtractTarRefusesSparse(t *testing.T) {
	dst := t.TempDir()
	if _, _, err := ExtractTar(bytes.NewReader(sparseBomb(t)), dst, "x"); !errors.Is(err, rpc.ErrBadRequest) {
		t.Errorf("a sparse entry: %v", err)
	}
	assertOnly(t, dst)
}
