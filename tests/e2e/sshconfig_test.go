package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

// TestSSHConfig: the OpenSSH tools reach a VM through `banger vm ssh-config`
// and nothing else: ssh runs commands by both of the VM's names, scp copies
// a file and a directory tree in and out, checksums intact; rsync does the
// same when both ends have it.
func TestSSHConfig(t *testing.T) {
	requireE2E(t)
	testutil.RequireTool(t, "scp")
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "sc1")
	conf := filepath.Join(e.Root, "ssh_config")
	r := e.MustBanger("vm", "ssh-config")
	if !strings.Contains(r.Stdout, "Host sc1.banger sc1\n") {
		t.Fatalf("ssh-config:\n%s", r.Stdout)
	}
	if err := os.WriteFile(conf, []byte(r.Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	// A HOME of its own: ssh reads and writes nothing of root's.
	home := t.TempDir()
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(name, args...)
		cmd.Env = []string{"HOME=" + home, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		return cmd
	}
	tool := func(name string, args ...string) string {
		t.Helper()
		out, err := command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return string(out)
	}

	// ssh by either name, with the command's output and status.
	if out := tool("ssh", "-F", conf, "sc1", "cat", "/etc/hostname"); out != "sc1\n" {
		t.Fatalf("ssh sc1: %q", out)
	}
	if out := tool("ssh", "-F", conf, "sc1.banger", "id", "-un"); out != "root\n" {
		t.Fatalf("ssh sc1.banger: %q", out)
	}
	if err := command("ssh", "-F", conf, "sc1", "exit 7").Run(); err == nil || err.Error() != "exit status 7" {
		t.Fatalf("remote exit status: %v, want 7", err)
	}

	// A file in and out with scp.
	local := t.TempDir()
	big := filepath.Join(local, "big.bin")
	writeRandom(t, big, 4<<20)
	tool("scp", "-F", conf, "-q", big, "sc1:/root/big.bin")
	if sum := strings.Fields(tool("ssh", "-F", conf, "sc1", "sha256sum", "/root/big.bin"))[0]; sum != fileSum(t, big) {
		t.Fatalf("in the guest: sha256 %s, want %s", sum, fileSum(t, big))
	}
	back := filepath.Join(local, "back.bin")
	tool("scp", "-F", conf, "-q", "sc1:/root/big.bin", back)
	if fileSum(t, back) != fileSum(t, big) {
		t.Fatal("the file copied back differs")
	}

	// A directory tree in and out with scp -r.
	src := filepath.Join(local, "tree")
	makeTree(t, src)
	want := treeSums(t, src)
	tool("scp", "-F", conf, "-q", "-r", src, "sc1:/root/tree")
	if got := guestTreeSums(t, tool, conf, "/root/tree"); !maps.Equal(got, want) {
		t.Fatalf("tree in the guest:\n%v\nwant:\n%v", got, want)
	}
	tool("ssh", "-F", conf, "sc1", "echo changed > /root/tree/a/new.txt")
	want["a/new.txt"] = sum([]byte("changed\n"))
	out := filepath.Join(local, "out")
	tool("scp", "-F", conf, "-q", "-r", "sc1:/root/tree", out)
	if got := treeSums(t, out); !maps.Equal(got, want) {
		t.Fatalf("tree copied back:\n%v\nwant:\n%v", got, want)
	}

	t.Run("rsync", func(t *testing.T) {
		if _, err := exec.LookPath("rsync"); err != nil {
			t.Skip("the host has no rsync (scripts/install-deps installs it)")
		}
		if strings.TrimSpace(tool("ssh", "-F", conf, "sc1", "command -v rsync || true")) == "" {
			t.Skip("the guest image has no rsync (guest.BasePackages lacks it); scp and ssh -F cover the config")
		}
		rsh := "ssh -F " + conf
		tool("rsync", "-a", "-e", rsh, src+"/", "sc1:/root/rtree/")
		if got := guestTreeSums(t, tool, conf, "/root/rtree"); !maps.Equal(got, treeSums(t, src)) {
			t.Fatalf("rsync in: %v", got)
		}
		rout := filepath.Join(local, "rout")
		tool("rsync", "-a", "-e", rsh, "sc1:/root/tree/", rout+"/")
		if got := treeSums(t, rout); !maps.Equal(got, want) {
			t.Fatalf("rsync out: %v", got)
		}
	})
	e.MustBanger("vm", "delete", "sc1")
}

func writeRandom(t *testing.T, path string, n int) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

// makeTree writes a small tree: nested directories, an empty file, a name
// with a space, random content.
func makeTree(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"a/b/c", "empty-dir-sibling", "d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{"top.txt": "top\n", "a/one.txt": "one\n", "a/b/two.txt": "two\n", "a/b/c/empty": "", "d/with space.txt": "spaced\n"}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeRandom(t, filepath.Join(root, "a/b/c/random.bin"), 300<<10)
}

// treeSums maps each regular file's path under root to its sha256.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sums[rel] = fileSum(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// guestTreeSums is treeSums of a directory in the guest, over ssh -F.
func guestTreeSums(t *testing.T, tool func(string, ...string) string, conf, dir string) map[string]string {
	t.Helper()
	out := tool("ssh", "-F", conf, "sc1", fmt.Sprintf("cd %s && find . -type f -exec sha256sum {} +", dir))
	sums := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		s, p, ok := strings.Cut(l, "  ")
		if !ok {
			t.Fatalf("sha256sum line %q", l)
		}
		sums[strings.TrimPrefix(p, "./")] = s
	}
	if len(sums) == 0 {
		t.Fatalf("no files in the guest's %s", dir)
	}
	return sums
}
