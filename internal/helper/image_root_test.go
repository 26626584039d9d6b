package helper

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/testutil"
)

// Root tier: a real image build, bootstrap to pack, through a helper served
// on a real socket. debootstrap reaches the mirror this host's apt uses
// (host network: the build creates no network object). The packed output
// is cached (testutil.CachedImage, keyed by testutil.GuestImageKey) so
// repeated runs check the cached image instead of building again.

const testSuite = "bookworm"

func requireImageTools(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	for _, tool := range []string{"debootstrap", "unshare", "setpriv", "chroot", "mke2fs", "e2fsck", "debugfs"} {
		testutil.RequireTool(t, tool)
	}
}

func TestImageBuildRoot(t *testing.T) {
	requireImageTools(t)
	mirror, security, err := testutil.DebianMirror(testSuite)
	if err != nil {
		t.Skipf("no Debian mirror for %s on this host: %v", testSuite, err)
	}
	key := testutil.GuestImageKey(testSuite, mirror, security, guest.BasePackages)
	dir := testutil.CachedImage(t, key, func(out string) { buildImage(t, out, mirror, security) })
	checkImage(t, dir)
}

// buildImage builds an image into out through an in-process helper whose
// state root is out's parent and whose build dir is a fresh temp dir, then
// checks that the build left no mount and no process behind.
func buildImage(t *testing.T, out, mirror, security string) {
	buildDir := filepath.Join(t.TempDir(), "builds")
	hs := startHelper(t, func(c *Config) {
		c.StateDirs = append(c.StateDirs, filepath.Dir(out))
		c.BuildDir = buildDir
		c.Runner = &runner.Exec{}
	})
	logPath := filepath.Join(out, "build.log")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := op.With(context.Background(), op.New())
	const id = "roottest"
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("build log (tail):\n%s", tail(string(b), 6000))
			}
		}
		hs.client.ImageDiscard(context.Background(), id)
		checkNothingLeft(t, buildDir)
	})

	start := time.Now()
	b, err := hs.client.ImageBootstrap(ctx, helperapi.ImageBootstrapParams{BuildID: id, Suite: testSuite, Mirror: mirror, Packages: guest.BasePackages, LogPath: logPath})
	if err != nil {
		t.Fatalf("image.bootstrap: %v", err)
	}
	checkNothingLeft(t, buildDir)
	c, err := hs.client.ImageConfigure(ctx, helperapi.ImageConfigureParams{BuildID: id, Suite: testSuite, Mirror: mirror, SecurityMirror: security, LogPath: logPath})
	if err != nil {
		t.Fatalf("image.configure: %v", err)
	}
	p, err := hs.client.ImagePack(ctx, helperapi.ImagePackParams{BuildID: id, OutDir: out, UID: 0, GID: 0, LogPath: logPath})
	if err != nil {
		t.Fatalf("image.pack: %v", err)
	}
	d, err := hs.client.ImageDiscard(ctx, id)
	if err != nil || !d.Deleted {
		t.Fatalf("image.discard: %+v %v", d, err)
	}
	t.Logf("built in %s: bootstrap %.1fs, configure %.1fs (kernel %s), pack %.1fs; rootfs %d MiB, work-seed %d MiB",
		time.Since(start).Round(100*time.Millisecond), float64(b.DurationMS)/1000, float64(c.DurationMS)/1000, c.KernelVersion,
		float64(p.DurationMS)/1000, p.RootfsSize>>20, p.WorkSeedSize>>20)
	if p.KernelVersion != c.KernelVersion || p.Rootfs != filepath.Join(out, "rootfs.ext4") {
		t.Errorf("pack result %+v", p)
	}
	if ents, _ := os.ReadDir(buildDir); len(ents) != 0 {
		t.Errorf("build dir not empty after discard: %v", ents)
	}
	// One log line per call, each with the op id.
	var lines int
	for _, l := range hs.log.lines(t) {
		if strings.HasPrefix(fmt.Sprint(l["method"]), "image.") && l["msg"] == "helper rpc completed" && l["op_id"] == op.From(ctx) {
			lines++
		}
	}
	if lines != 4 {
		t.Errorf("%d completed image lines with the op id, want 4:\n%s", lines, hs.log.String())
	}
}

// checkNothingLeft fails t if anything is mounted under dir, or a process
// has its root or working directory there.
func checkNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if m := mountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left under %s: %q", dir, m)
	}
	if p := processesUnder(dir); len(p) > 0 {
		t.Errorf("processes left with root or cwd under %s: %v", dir, p)
	}
}

// debugfs runs one debugfs request on img (read-only, nothing mounted).
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).Output()
	if err != nil {
		t.Errorf("debugfs -R %q %s: %v", request, img, err)
	}
	return string(out)
}

// checkImage checks a packed image without mounting it.
func checkImage(t *testing.T, dir string) {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	seed := filepath.Join(dir, "work-seed.ext4")
	for _, img := range []string{rootfs, seed} {
		if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(rootfs, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= st.Size {
		t.Errorf("rootfs.ext4 is not sparse: %d of %d bytes allocated", st.Blocks*512, st.Size)
	}
	t.Logf("rootfs.ext4: %d MiB, %d MiB allocated", st.Size>>20, st.Blocks*512>>20)

	stat := func(p string) string { return debugfs(t, rootfs, "stat "+p) }
	if s := stat("/usr/sbin/sshd"); !strings.Contains(s, "Type: regular") || !strings.Contains(s, "Mode:  0755") {
		t.Errorf("/usr/sbin/sshd:\n%s", s)
	}
	if s := stat("/usr/local/sbin/banger-init"); !strings.Contains(s, "Type: regular") || !strings.Contains(s, "Mode:  0755") || !strings.Contains(s, "User:     0   Group:     0") {
		t.Errorf("banger-init:\n%s", s)
	}
	embedded := guest.Embedded()
	if got := debugfs(t, rootfs, "cat /usr/local/sbin/banger-init"); got != string(embedded["banger-init"]) {
		t.Errorf("banger-init differs from the embedded one")
	}
	if s := stat("/etc/systemd/system/sysinit.target.wants/banger-init.service"); !strings.Contains(s, "Type: symlink") ||
		!strings.Contains(s, `Fast link dest: "/etc/systemd/system/banger-init.service"`) {
		t.Errorf("banger-init.service not enabled:\n%s", s)
	}
	if s := stat("/etc/systemd/system/banger-init.service"); !strings.Contains(s, "Type: regular") {
		t.Errorf("banger-init.service:\n%s", s)
	}
	if s := stat("/etc/systemd/system/systemd-udevd.service"); !strings.Contains(s, `Fast link dest: "/dev/null"`) {
		t.Errorf("udevd not masked:\n%s", s)
	}
	fstab := debugfs(t, rootfs, "cat /etc/fstab")
	if !strings.Contains(fstab, "/dev/vdb\t/root\text4\tdefaults,noatime,noauto\t0\t0\n") || !strings.Contains(fstab, "/dev/vda\t/\text4") {
		t.Errorf("fstab:\n%s", fstab)
	}
	if got := debugfs(t, rootfs, "cat /etc/machine-id"); got != "" {
		t.Errorf("machine-id %q", got)
	}
	if got := debugfs(t, rootfs, "cat /etc/hostname"); got != "banger\n" {
		t.Errorf("hostname %q", got)
	}
	if got := debugfs(t, rootfs, "cat /etc/apt/sources.list"); !strings.Contains(got, " "+testSuite+" main\n") {
		t.Errorf("sources.list %q", got)
	}
	if ls := debugfs(t, rootfs, "ls /etc/ssh"); strings.Contains(ls, "ssh_host_") {
		t.Errorf("host keys shipped in the image: %s", ls)
	}
	if ls := strings.Fields(debugfs(t, rootfs, "ls /root")); len(ls) > 0 && !onlyDots(ls) {
		t.Errorf("/root is not an empty mountpoint: %q", ls)
	}
	modules := debugfs(t, rootfs, "ls /usr/lib/modules")
	kver := regexp.MustCompile(`[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-cloud-amd64`).FindString(modules)
	if kver == "" {
		t.Fatalf("no cloud kernel in /lib/modules: %q", modules)
	}
	if s := stat("/usr/lib/modules/" + kver + "/modules.dep"); !strings.Contains(s, "Type: regular") {
		t.Errorf("modules.dep of %s:\n%s", kver, s)
	}
	if s := stat("/lib"); !strings.Contains(s, `Fast link dest: "usr/lib"`) {
		t.Logf("/lib is not the merged-/usr link: %s", s)
	}

	// The work-seed: root's home, .ssh 0700.
	ls := debugfs(t, seed, "ls -l /")
	for _, want := range []string{".bashrc", ".profile", ".ssh"} {
		if !strings.Contains(ls, want) {
			t.Errorf("work-seed lacks %s:\n%s", want, ls)
		}
	}
	if s := debugfs(t, seed, "stat /.ssh"); !strings.Contains(s, "Type: directory") || !strings.Contains(s, "Mode:  0700") || !strings.Contains(s, "User:     0") {
		t.Errorf("work-seed .ssh:\n%s", s)
	}
	if s := debugfs(t, seed, "stat /"); !strings.Contains(s, "User:     0   Group:     0") || !strings.Contains(s, "Mode:  0700") {
		t.Errorf("work-seed root dir (the guest's /root, want 0700 root's):\n%s", s)
	}
	if out, _ := exec.Command("dumpe2fs", "-h", seed).Output(); !bytes.Contains(out, []byte("Filesystem volume name:   banger-work")) {
		t.Errorf("work-seed label:\n%s", out)
	}

	// Kernel, initrd, config.
	kernel, _ := os.ReadFile(filepath.Join(dir, "vmlinuz"))
	if len(kernel) < 1<<20 || string(kernel[0x202:0x206]) != "HdrS" {
		t.Errorf("vmlinuz is not a bzImage (%d bytes)", len(kernel))
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "kernel.config"))
	if !bytes.Contains(cfg, []byte("CONFIG_VIRTIO_MMIO=m")) {
		t.Errorf("kernel.config lacks CONFIG_VIRTIO_MMIO=m")
	}
	initrd, err := os.Open(filepath.Join(dir, "initrd.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer initrd.Close()
	zr, err := gzip.NewReader(initrd)
	if err != nil {
		t.Fatalf("initrd.img is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range append([]string{"bin/busybox", "init", "dev/console"}, modulePaths()...) {
		if !bytes.Contains(raw, []byte(m+"\x00")) {
			t.Errorf("initrd lacks %s", m)
		}
	}
	t.Logf("mini initrd: %d KiB compressed, %d KiB raw", fileSize(t, filepath.Join(dir, "initrd.img"))>>10, len(raw)>>10)
}

func modulePaths() []string {
	var out []string
	for _, m := range guest.InitrdModules {
		out = append(out, "lib/modules/"+m+".ko")
	}
	return out
}

func onlyDots(ls []string) bool {
	for _, f := range ls {
		if f != "." && f != ".." && !strings.HasPrefix(f, "(") && !regexp.MustCompile(`^\d+$`).MatchString(f) {
			return false
		}
	}
	return true
}

func fileSize(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// The namespace wrapper: a mount made inside is never seen outside, and
// when the wrapper's parent dies, everything in the namespace dies with it.
func TestNamespaceWrapperRoot(t *testing.T) {
	requireImageTools(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	argv := append(slices.Clone(nsWrap), "mount", "-t", "tmpfs", "banger-test", mnt)
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
	if m := mountsUnder(dir); len(m) > 0 {
		t.Errorf("a mount made in the namespace is visible outside: %q", m)
	}

	// sh starts the wrapper in the background and exits: the wrapper's
	// parent is gone, so its parent-death signal kills it, and with it the
	// namespace's processes.
	marker := strconv.Itoa(os.Getpid()) + ".123"
	script := `"$@" & echo $!; sleep 0.5`
	args := append([]string{"-c", script, "sh"}, nsWrap...)
	args = append(args, "sleep", marker)
	if out, err := exec.Command("sh", args...).CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := sleepers(marker)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				syscall.Kill(p, syscall.SIGKILL)
			}
			t.Fatalf("processes outlived the wrapper's parent: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sleepers lists the pids whose command line is "sleep marker".
func sleepers(marker string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if string(cl) == "sleep\x00"+marker+"\x00" {
			out = append(out, pid)
		}
	}
	return out
}

// envImageChild tells the test binary, re-run as uid 65534, to call the
// image methods on this socket with arguments from the environment.
const envImageChild = "BANGER_TEST_IMAGE_SOCKET"

// A non-root caller is refused a log, an output directory or a uid that is
// not its own, over the real socket.
func TestImageNotOwnedRefusedRoot(t *testing.T) {
	if sock := os.Getenv(envImageChild); sock != "" {
		c := helperapi.NewClient(sock)
		ctx := context.Background()
		logPath, outDir, ownLog := os.Getenv("BANGER_TEST_LOG"), os.Getenv("BANGER_TEST_OUT"), os.Getenv("BANGER_TEST_OWN_LOG")
		_, err := c.ImageBootstrap(ctx, helperapi.ImageBootstrapParams{BuildID: "x", Suite: "bookworm", Mirror: "http://m.example/debian", LogPath: logPath})
		fmt.Printf("CHILD bootstrap-foreign-log=%s\n", rpc.CodeOf(err))
		_, err = c.ImagePack(ctx, helperapi.ImagePackParams{BuildID: "x", OutDir: outDir, UID: 65534, GID: 65534, LogPath: ownLog})
		fmt.Printf("CHILD pack-foreign-dir=%s\n", rpc.CodeOf(err))
		_, err = c.ImagePack(ctx, helperapi.ImagePackParams{BuildID: "x", OutDir: outDir, UID: 0, GID: 65534, LogPath: ownLog})
		fmt.Printf("CHILD pack-root-uid=%s\n", rpc.CodeOf(err))
		return
	}
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "banger-imgperm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o755)
	rootLog := filepath.Join(state, "root.log")
	os.WriteFile(rootLog, nil, 0o644)
	ownLog := filepath.Join(state, "own.log")
	os.WriteFile(ownLog, nil, 0o644)
	os.Chown(ownLog, 65534, 65534)
	out := filepath.Join(state, "img")
	os.Mkdir(out, 0o755)
	sock := filepath.Join(dir, "h.sock")
	startHelperAt(t, sock, 0o666, func(c *Config) {
		c.StateDirs = []string{state}
		c.BuildDir = filepath.Join(dir, "builds")
	})
	res := runAsNobody(t, dir, envImageChild+"="+sock, "BANGER_TEST_LOG="+rootLog, "BANGER_TEST_OUT="+out, "BANGER_TEST_OWN_LOG="+ownLog)
	for _, want := range []string{"CHILD bootstrap-foreign-log=forbidden", "CHILD pack-foreign-dir=forbidden", "CHILD pack-root-uid=forbidden"} {
		if !strings.Contains(res, want) {
			t.Errorf("child output lacks %q", want)
		}
	}
}
