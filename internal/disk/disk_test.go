package disk

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/runner"
)

func needTools(t *testing.T, tools ...string) {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// TestWorkDiskFromSeedReal clones a real seed, grows it and installs the key
// with the real e2fsprogs; then checks size, fsck and the key.
func TestWorkDiskFromSeedReal(t *testing.T) {
	needTools(t, "mke2fs", "e2fsck", "resize2fs", "debugfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "root")
	os.MkdirAll(tree, 0o700)
	os.WriteFile(filepath.Join(tree, ".profile"), []byte("x\n"), 0o644)
	r := &runner.Exec{}
	ctx := context.Background()
	seed := filepath.Join(dir, "seed.ext4")
	if _, err := r.Run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, seed, "16M"); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "id.pub")
	os.WriteFile(key, []byte("ssh-ed25519 AAAATEST banger\n"), 0o644)
	out := filepath.Join(dir, "work.ext4")
	fromSeed, err := WorkDisk(ctx, r, seed, "", out, 256<<20, Keys{AuthorizedKey: key})
	if err != nil || !fromSeed {
		t.Fatalf("WorkDisk: %v (fromSeed %v)", err, fromSeed)
	}
	st, _ := os.Stat(out)
	if st.Size() != 256<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if _, err := r.Run(ctx, "e2fsck", "-fn", out); err != nil {
		t.Fatalf("fsck after grow: %v", err)
	}
	info, _ := r.Run(ctx, "debugfs", "-R", "stat /.ssh/authorized_keys", out)
	if !strings.Contains(string(info), "Mode:  0600") || !strings.Contains(string(info), "User:     0") {
		t.Fatalf("authorized_keys mode/owner:\n%s", info)
	}
	prof, _ := r.Run(ctx, "debugfs", "-R", "cat /.profile", out)
	if string(prof) != "x\n" {
		t.Fatalf("seed content lost: %q", prof)
	}
	// Block count grew with the file.
	df, _ := r.Run(ctx, "dumpe2fs", "-h", out)
	if !strings.Contains(string(df), "Block count:              262144") && !strings.Contains(string(df), "Block count:              65536") {
		t.Fatalf("file system not grown:\n%s", df)
	}
}

// TestWorkDiskWithoutSeedReal: the slow way copies the image's /root into
// a new file system of the full size, owned by root, with the key.
func TestWorkDiskWithoutSeedReal(t *testing.T) {
	needTools(t, "mke2fs", "debugfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "root"), 0o700)
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "root", ".bashrc"), []byte("PS1=x\n"), 0o644)
	r := &runner.Exec{}
	ctx := context.Background()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if _, err := r.Run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, rootfs, "32M"); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "id.pub")
	os.WriteFile(key, []byte("ssh-ed25519 K banger\n"), 0o644)
	out := filepath.Join(dir, "work.ext4")
	hostKey := filepath.Join(dir, "host")
	os.WriteFile(hostKey, []byte("PRIVATE\n"), 0o600)
	os.WriteFile(hostKey+".pub", []byte("ssh-ed25519 HOST\n"), 0o644)
	fromSeed, err := WorkDisk(ctx, r, "", rootfs, out, 128<<20, Keys{AuthorizedKey: key, HostKey: hostKey})
	if err != nil || fromSeed {
		t.Fatalf("%v %v", err, fromSeed)
	}
	if st, _ := os.Stat(out); st.Size() != 128<<20 {
		t.Fatalf("size %d", st.Size())
	}
	for path, want := range map[string]string{"/.bashrc": "PS1=x\n", "/.ssh/authorized_keys": "ssh-ed25519 K banger\n",
		"/.banger/ssh_host_ed25519_key": "PRIVATE\n", "/.banger/ssh_host_ed25519_key.pub": "ssh-ed25519 HOST\n"} {
		got, err := r.Run(ctx, "debugfs", "-R", "cat "+path, out)
		if err != nil || string(got) != want {
			t.Fatalf("%s: %q %v", path, got, err)
		}
	}
	if st, _ := r.Run(ctx, "debugfs", "-R", "stat /.banger/ssh_host_ed25519_key", out); !strings.Contains(string(st), "Mode:  0600") {
		t.Fatalf("host key mode:\n%s", st)
	}
	st, _ := r.Run(ctx, "debugfs", "-R", "stat /", out)
	if !strings.Contains(string(st), "Mode:  0700") || !strings.Contains(string(st), "User:     0") {
		t.Fatalf("top directory (the guest's /root) mode/owner:\n%s", st)
	}
}

func TestOverlayQcow2Argv(t *testing.T) {
	f := &runner.Fake{}
	f.Expect("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/img/rootfs.ext4", "/vm/root.qcow2")
	p, format, err := Overlay(context.Background(), f, StrategyQcow2, "/img/rootfs.ext4", "/vm")
	if err != nil || p != "/vm/root.qcow2" || format != "qcow2" {
		t.Fatalf("%s %s %v", p, format, err)
	}
}

func TestSparseCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 64<<20)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := CopySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if string(a) != string(b) {
		t.Fatal("content differs")
	}
	var st1 = statBlocks(t, dst)
	if st1 > 1024 { // 512-byte blocks: well under 512 KiB allocated
		t.Fatalf("copy is not sparse: %d blocks", st1)
	}
}

func statBlocks(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks
}

// countingRunner records the commands a real runner runs.
type countingRunner struct {
	runner.Exec
	names []string
}

func (c *countingRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	c.names = append(c.names, name)
	return c.Exec.Run(ctx, name, args...)
}

// TestWorkDiskCachedGrowsOnce: the first disk of a size grows the seed and
// caches it with the install's key; the next clones that copy and only
// writes its own host key (no e2fsck, no resize2fs); both disks hold the
// seed's content, the key and their own host keys.
func TestWorkDiskCachedGrowsOnce(t *testing.T) {
	needTools(t, "mke2fs", "e2fsck", "resize2fs", "debugfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "root")
	os.MkdirAll(tree, 0o700)
	os.WriteFile(filepath.Join(tree, ".profile"), []byte("x\n"), 0o644)
	ctx := context.Background()
	seed := filepath.Join(dir, "seed.ext4")
	if _, err := (&runner.Exec{}).Run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, seed, "16M"); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "id.pub")
	os.WriteFile(key, []byte("ssh-ed25519 AAAACACHE banger\n"), 0o644)
	cache := filepath.Join(dir, "img")
	os.Mkdir(cache, 0o700)
	for i, host := range []string{"HOST-A", "HOST-B"} {
		hk := filepath.Join(dir, fmt.Sprintf("hk%d", i))
		os.WriteFile(hk, []byte(host+"\n"), 0o600)
		os.WriteFile(hk+".pub", []byte(host+".pub\n"), 0o644)
		r := &countingRunner{}
		out := filepath.Join(dir, fmt.Sprintf("work%d.ext4", i))
		if _, err := WorkDiskCached(ctx, r, seed, "", cache, out, 256<<20, Keys{AuthorizedKey: key, HostKey: hk}); err != nil {
			t.Fatal(err)
		}
		grew := strings.Contains(strings.Join(r.names, " "), "resize2fs")
		if grew != (i == 0) {
			t.Fatalf("disk %d: ran %v", i, r.names)
		}
		for path, want := range map[string]string{"/.profile": "x\n", "/.ssh/authorized_keys": "ssh-ed25519 AAAACACHE banger\n", "/.banger/ssh_host_ed25519_key": host + "\n"} {
			got, err := (&runner.Exec{}).Run(ctx, "debugfs", "-R", "cat "+path, out)
			if err != nil || string(got) != want {
				t.Fatalf("disk %d %s: %q %v", i, path, got, err)
			}
		}
		if st, _ := os.Stat(out); st.Size() != 256<<20 {
			t.Fatalf("disk %d size %d", i, st.Size())
		}
	}
	if cached, _ := filepath.Glob(filepath.Join(cache, GrownSeedPattern)); len(cached) != 1 {
		t.Fatalf("cache: %v", cached)
	}
}

func TestWriteConfigDisk(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "host")
	os.WriteFile(key, []byte("PRIVATE\n"), 0o600)
	out := filepath.Join(dir, "config.tar")
	if err := WriteConfigDisk(out, key, nil); err == nil {
		t.Fatal("no .pub: no error")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a failed write left %s: %v", out, err)
	}
	os.WriteFile(key+".pub", []byte("ssh-ed25519 AAAA\n"), 0o644)
	if err := WriteConfigDisk(out, key, nil); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 || st.Size()%4096 != 0 {
		t.Fatalf("config disk: %v, %v; want 0600, whole 4 KiB blocks", st, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("files left beside it: %v", entries)
	}
}
