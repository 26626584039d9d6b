package helper

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

const testKver = "6.1.0-9-cloud-amd64"

// stepRunner is the harness's Fake plus side effects: what the real
// command would have left on disk.
type stepRunner struct {
	fake *runner.Fake
	hook func(argv []string) error
}

func (r *stepRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := r.fake.Run(ctx, name, args...)
	if err == nil && r.hook != nil {
		err = r.hook(append([]string{name}, args...))
	}
	return out, err
}

// withBuilds gives the harness a build dir and a runner with hook.
func withBuilds(dir string, hook func(argv []string) error) harnessOpt {
	return func(c *Config) {
		c.BuildDir = dir
		fake := c.Runner.(*runner.Fake)
		c.ImageRunner = func(io.Writer) runner.Runner { return &stepRunner{fake: fake, hook: hook} }
	}
}

// fakeTree is what a debootstrap of BasePackages leaves, in miniature.
func fakeTree(t *testing.T, tree string) {
	t.Helper()
	files := map[string]string{
		"var/lib/dpkg/status":                              "Package: base-files\n",
		"etc/hostname":                                     "buildhost\n",
		"etc/resolv.conf":                                  "nameserver 192.0.2.53\n",
		"etc/machine-id":                                   "0123456789abcdef0123456789abcdef\n",
		"etc/ssh/ssh_host_rsa_key":                         "secret",
		"etc/ssh/ssh_host_ed25519_key.pub":                 "pub",
		"etc/ssh/sshd_config":                              "# stock\n",
		"etc/apt/sources.list":                             "deb http://deb.debian.org/debian bookworm main\n",
		"etc/initramfs-tools/initramfs.conf":               "MODULES=most\n",
		"var/cache/apt/archives/x.deb":                     "deb",
		"var/cache/apt/pkgcache.bin":                       "bin",
		"var/lib/apt/lists/partial/y":                      "list",
		"var/log/dpkg.log":                                 "log",
		"usr/bin/busybox":                                  "\x7fELF static busybox",
		"usr/lib/modules/" + testKver + "/modules.builtin": "kernel/fs/ext4/ext4.ko\n",
		"boot/vmlinuz-" + testKver:                         "MZ kernel " + strings.Repeat("k", 70000),
		"boot/config-" + testKver:                          "CONFIG_VIRTIO_MMIO=m\n",
		"boot/initrd.img-" + testKver:                      "initramfs-tools initrd",
		"root/.bashrc":                                     "# bashrc\n",
		"root/.profile":                                    "# profile\n",
	}
	var dep strings.Builder
	for _, m := range guest.InitrdModules {
		p := "kernel/drivers/" + m + ".ko"
		dep.WriteString(p + ":\n")
		files["usr/lib/modules/"+testKver+"/"+p] = "\x7fELF module " + m
	}
	files["usr/lib/modules/"+testKver+"/modules.dep"] = dep.String()
	for p, c := range files {
		full := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// merged /usr, as bookworm's debootstrap makes it
	for _, l := range []string{"bin", "lib", "sbin"} {
		if err := os.Symlink("usr/"+l, filepath.Join(tree, l)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(tree, "usr/sbin"), 0o755)
	os.MkdirAll(filepath.Join(tree, "etc/systemd/system/multi-user.target.wants"), 0o755)
	os.MkdirAll(filepath.Join(tree, "tmp"), 0o1777)
	os.Chmod(filepath.Join(tree, "root"), 0o700)
}

type imageHarness struct {
	*harness
	buildDir string
	logPath  string
	outDir   string
}

func startImageHelper(t *testing.T, hook func(argv []string) error) *imageHarness {
	t.Helper()
	buildDir := filepath.Join(t.TempDir(), "builds")
	hs := startHelper(t, withBuilds(buildDir, hook))
	ih := &imageHarness{harness: hs, buildDir: buildDir}
	img := filepath.Join(hs.stateDir, "images", "demo")
	if err := os.MkdirAll(img, 0o700); err != nil {
		t.Fatal(err)
	}
	ih.outDir = img
	ih.logPath = filepath.Join(img, "build.log")
	if err := os.WriteFile(ih.logPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return ih
}

func (ih *imageHarness) buildLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(ih.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var nsPrefix = []string{"setpriv", "--pdeathsig", "KILL", "--", "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"}

// The whole pipeline through the fake runner: exact argv of every command,
// what configure writes into the tree, what pack hands over.
func TestImageStepsArgv(t *testing.T) {
	var ih *imageHarness
	tree := func() string { return filepath.Join(ih.buildDir, "demo-1", "tree") }
	ih = startImageHelper(t, func(argv []string) error {
		switch {
		case slices.Contains(argv, "debootstrap"):
			fakeTree(t, tree())
		case argv[0] == "mke2fs":
			img := argv[len(argv)-2]
			f, err := os.Create(img)
			if err != nil {
				return err
			}
			defer f.Close()
			// 64 MiB with data at the start and the end only
			if _, err := f.WriteAt([]byte("ext4 superblock"), 1024); err != nil {
				return err
			}
			if _, err := f.WriteAt([]byte("end"), 64<<20-3); err != nil {
				return err
			}
		}
		return nil
	})
	ctx := context.Background()
	mirror := "http://deb.debian.org/debian"
	pkgs := strings.Join(append(slices.Clone(guest.BasePackages), "vim"), ",")
	ih.fake.Expect(append(slices.Clone(nsPrefix), "debootstrap", "--variant=minbase", "--include="+pkgs, "bookworm",
		filepath.Join(ih.buildDir, "demo-1", "tree"), mirror)...)
	ih.fake.Expect(append(slices.Clone(nsPrefix), "chroot", filepath.Join(ih.buildDir, "demo-1", "tree"), "update-initramfs", "-c", "-k", testKver)...)
	scratch := filepath.Join(ih.buildDir, "demo-1")
	ih.fake.Expect("mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-root", "-m", "0", "-E", "root_owner=0:0",
		"-d", filepath.Join(scratch, "tree"), filepath.Join(scratch, "rootfs.ext4"), "64M")
	ih.fake.Expect("mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-work", "-m", "0", "-E", "root_owner=0:0",
		"-d", filepath.Join(scratch, "seed"), filepath.Join(scratch, "work-seed.ext4"), "16M")
	ih.fake.Expect("debugfs", "-w", "-R", "sif / mode 040700", filepath.Join(scratch, "work-seed.ext4"))
	ih.fake.Expect("e2fsck", "-fn", filepath.Join(scratch, "rootfs.ext4"))
	ih.fake.Expect("e2fsck", "-fn", filepath.Join(scratch, "work-seed.ext4"))

	// Packages are BasePackages plus the extra ones, once each.
	if _, err := ih.client.ImageBootstrap(ctx, helperapi.ImageBootstrapParams{
		BuildID: "demo-1", Suite: "bookworm", Mirror: mirror, Packages: []string{"openssh-server", "vim"}, LogPath: ih.logPath,
	}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	// Configure and pack may not run out of order.
	if _, err := ih.client.ImagePack(ctx, helperapi.ImagePackParams{BuildID: "demo-1", OutDir: ih.outDir, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), LogPath: ih.logPath}); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("pack before configure: %v", err)
	}
	if _, err := ih.client.ImageConfigure(ctx, helperapi.ImageConfigureParams{BuildID: "demo-1", Suite: "trixie", Mirror: mirror, LogPath: ih.logPath}); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("configure of another suite: %v", err)
	}
	conf, err := ih.client.ImageConfigure(ctx, helperapi.ImageConfigureParams{
		BuildID: "demo-1", Suite: "bookworm", Mirror: mirror, SecurityMirror: "http://deb.debian.org/debian-security", LogPath: ih.logPath,
	})
	if err != nil || conf.KernelVersion != testKver {
		t.Fatalf("configure: %+v, %v", conf, err)
	}
	checkConfiguredTree(t, tree())

	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	pack, err := ih.client.ImagePack(ctx, helperapi.ImagePackParams{BuildID: "demo-1", OutDir: ih.outDir, RootfsSize: 64 << 20, UID: uid, GID: gid, LogPath: ih.logPath})
	if err != nil {
		t.Fatalf("pack: %v\n%s", err, ih.buildLog(t))
	}
	want := helperapi.ImagePackResult{
		KernelVersion: testKver,
		Rootfs:        filepath.Join(ih.outDir, "rootfs.ext4"), RootfsSize: 64 << 20,
		WorkSeed: filepath.Join(ih.outDir, "work-seed.ext4"), WorkSeedSize: 64 << 20,
		Kernel: filepath.Join(ih.outDir, "vmlinuz"), Initrd: filepath.Join(ih.outDir, "initrd.img"),
		KernelConfig: filepath.Join(ih.outDir, "kernel.config"), DurationMS: pack.DurationMS,
	}
	if pack != want {
		t.Errorf("pack result\n got %+v\nwant %+v", pack, want)
	}
	for _, name := range []string{"rootfs.ext4", "work-seed.ext4", "vmlinuz", "initrd.img", "kernel.config"} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(ih.outDir, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != uid || st.Gid != gid || st.Mode&0o7777 != 0o644 || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			t.Errorf("%s: uid %d gid %d mode %o", name, st.Uid, st.Gid, st.Mode)
		}
		if name == "rootfs.ext4" && st.Blocks*512 > 1<<20 {
			t.Errorf("rootfs.ext4 is not sparse: %d bytes allocated", st.Blocks*512)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(ih.outDir, "rootfs.ext4")); len(got) != 64<<20 || !bytes.Equal(got[1024:1039], []byte("ext4 superblock")) || string(got[len(got)-3:]) != "end" {
		t.Errorf("rootfs.ext4 content differs (%d bytes)", len(got))
	}
	if got, _ := os.ReadFile(filepath.Join(ih.outDir, "vmlinuz")); !strings.HasPrefix(string(got), "MZ kernel") || len(got) != 70000+len("MZ kernel ") {
		t.Errorf("vmlinuz: %d bytes", len(got))
	}
	// The mini initrd, not the tree's initramfs-tools one.
	if got, _ := os.ReadFile(filepath.Join(ih.outDir, "initrd.img")); !bytes.HasPrefix(got, []byte{0x1f, 0x8b}) {
		t.Errorf("initrd.img is not the mini initrd: %q", got[:min(len(got), 20)])
	}
	// /root went to the seed; the tree keeps an empty mountpoint.
	seed := filepath.Join(ih.buildDir, "demo-1", "seed")
	for _, n := range []string{".bashrc", ".profile", ".ssh"} {
		if _, err := os.Lstat(filepath.Join(seed, n)); err != nil {
			t.Errorf("seed lacks %s: %v", n, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(tree(), "root")); err != nil || len(ents) != 0 {
		t.Errorf("tree /root not empty: %v %v", ents, err)
	}
	if fi, err := os.Stat(seed); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("seed dir: %v %v", fi.Mode(), err)
	}

	// Packing again into the same directory never overwrites.
	if _, err := ih.client.ImagePack(ctx, helperapi.ImagePackParams{BuildID: "demo-1", OutDir: ih.outDir, UID: uid, GID: gid, LogPath: ih.logPath}); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("second pack: %v", err)
	}

	log := ih.buildLog(t)
	for _, want := range []string{"==> image.bootstrap: image.bootstrap for build demo-1 (op-", "==> image.bootstrap: debootstrap bookworm from " + mirror,
		"==> image.configure: writing ", "==> image.configure: kernel " + testKver, "==> image.configure: update-initramfs for " + testKver,
		"==> image.configure: mini initrd: ", "==> image.pack: rootfs.ext4: 64 MiB", "==> image.pack: checking rootfs.ext4", "==> image.pack: copying 5 files"} {
		if !strings.Contains(log, want) {
			t.Errorf("build log lacks %q:\n%s", want, log)
		}
	}

	// Discard, twice.
	if r, err := ih.client.ImageDiscard(ctx, "demo-1"); err != nil || !r.Deleted {
		t.Errorf("discard: %+v %v", r, err)
	}
	if _, err := os.Lstat(filepath.Join(ih.buildDir, "demo-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("build dir left: %v", err)
	}
	if r, err := ih.client.ImageDiscard(ctx, "demo-1"); err != nil || r.Deleted {
		t.Errorf("second discard: %+v %v", r, err)
	}
	// Configure of a build that is gone.
	if _, err := ih.client.ImageConfigure(ctx, helperapi.ImageConfigureParams{BuildID: "demo-1", Suite: "bookworm", Mirror: mirror, LogPath: ih.logPath}); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("configure after discard: %v", err)
	}
}

// checkConfiguredTree checks what image.configure wrote.
func checkConfiguredTree(t *testing.T, tree string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Errorf("%v", err)
		}
		return string(b)
	}
	for _, f := range guest.Files() {
		p := filepath.Join(tree, f.Path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", f.Path, err)
			continue
		}
		switch {
		case f.IsSymlink():
			if target, _ := os.Readlink(p); target != f.Target {
				t.Errorf("%s -> %q, want %q", f.Path, target, f.Target)
			}
		case f.IsDir():
			if !fi.IsDir() || fi.Mode().Perm() != f.Mode.Perm() {
				t.Errorf("%s: %v, want dir %v", f.Path, fi.Mode(), f.Mode)
			}
		default:
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode.Perm() || read(f.Path) != string(f.Content) {
				t.Errorf("%s: mode %v, want %v, or content differs", f.Path, fi.Mode(), f.Mode)
			}
		}
	}
	if got := read("/etc/apt/sources.list"); !strings.Contains(got, "deb http://deb.debian.org/debian-security bookworm-security main\n") {
		t.Errorf("sources.list: %q", got)
	}
	for _, gone := range []string{"etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_ed25519_key.pub", "var/cache/apt/archives/x.deb",
		"var/cache/apt/pkgcache.bin", "var/lib/apt/lists/partial", "var/log/dpkg.log"} {
		if _, err := os.Lstat(filepath.Join(tree, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", gone, err)
		}
	}
	if read("/etc/machine-id") != "" || read("/etc/hostname") != "banger\n" {
		t.Error("machine-id or hostname not reset")
	}
	if !strings.Contains(read("/etc/fstab"), "/dev/vdb\t/root\text4") {
		t.Error("fstab")
	}
	// The rest of the tree is untouched.
	if read("/etc/ssh/sshd_config") != "# stock\n" {
		t.Error("sshd_config changed")
	}
}

// A failing command fails the step with an error naming the log, whose
// header says what was being done.
func TestImageStepFailureNamesLog(t *testing.T) {
	ih := startImageHelper(t, nil)
	ih.fake.Expect(append(slices.Clone(nsPrefix), "debootstrap", "--variant=minbase", "--include="+strings.Join(guest.BasePackages, ","),
		"bookworm", filepath.Join(ih.buildDir, "b1", "tree"), "http://mirror.example/debian")...).Fails(errors.New("exit status 1"))
	_, err := ih.client.ImageBootstrap(context.Background(), helperapi.ImageBootstrapParams{
		BuildID: "b1", Suite: "bookworm", Mirror: "http://mirror.example/debian", LogPath: ih.logPath,
	})
	if err == nil || !strings.Contains(err.Error(), ih.logPath) || rpc.CodeOf(err) != rpc.CodeInternal {
		t.Fatalf("want an internal error naming %s, got %v", ih.logPath, err)
	}
	if !strings.Contains(err.Error(), "debootstrap bookworm") {
		t.Errorf("error does not say which step: %v", err)
	}
	log := ih.buildLog(t)
	if !strings.Contains(log, "==> image.bootstrap: debootstrap bookworm from http://mirror.example/debian") || !strings.Contains(log, "==> image.bootstrap: FAILED: ") {
		t.Errorf("log:\n%s", log)
	}
	// The half-made tree stays for image.discard (or the next attempt).
	if r, err := ih.client.ImageDiscard(context.Background(), "b1"); err != nil || !r.Deleted {
		t.Errorf("discard: %+v, %v", r, err)
	}
}

// A symlink planted in the tree never sends a write through it.
func TestImageConfigureRefusesSymlinks(t *testing.T) {
	outside := t.TempDir()
	var ih *imageHarness
	ih = startImageHelper(t, func(argv []string) error {
		tree := filepath.Join(ih.buildDir, "s1", "tree")
		fakeTree(t, tree)
		// /usr/local -> a directory outside the tree
		return os.Symlink(outside, filepath.Join(tree, "usr", "local"))
	})
	ctx := context.Background()
	ih.fake.Unordered = true
	ih.fake.Expect(append(slices.Clone(nsPrefix), "debootstrap", "--variant=minbase", "--include="+strings.Join(guest.BasePackages, ","),
		"bookworm", filepath.Join(ih.buildDir, "s1", "tree"), "http://m.example/debian")...)
	if _, err := ih.client.ImageBootstrap(ctx, helperapi.ImageBootstrapParams{BuildID: "s1", Suite: "bookworm", Mirror: "http://m.example/debian", LogPath: ih.logPath}); err != nil {
		t.Fatal(err)
	}
	_, err := ih.client.ImageConfigure(ctx, helperapi.ImageConfigureParams{BuildID: "s1", Suite: "bookworm", Mirror: "http://m.example/debian", LogPath: ih.logPath})
	if err == nil || !strings.Contains(err.Error(), "/usr/local in the tree is not a directory") {
		t.Errorf("configure through a symlink: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside the tree: %v", ents)
	}

	// Directly: a file that is a symlink is replaced, not followed.
	tr, err := openTree(filepath.Join(ih.buildDir, "s1", "tree"))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)
	os.Remove(filepath.Join(ih.buildDir, "s1", "tree", "etc", "fstab"))
	if err := os.Symlink(victim, filepath.Join(ih.buildDir, "s1", "tree", "etc", "fstab")); err != nil {
		t.Fatal(err)
	}
	if err := tr.write(guest.File{Path: "/etc/fstab", Mode: 0o644, Content: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("write followed the symlink: victim now %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(ih.buildDir, "s1", "tree", "etc", "fstab")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("fstab not replaced by a file: %v %v", fi, err)
	}
	if err := tr.write(guest.File{Path: "/etc/../../x", Mode: 0o644}); err == nil {
		t.Error("unclean path written")
	}
}

// The log must be an existing regular file under a state root, the
// caller's; anything else is refused over the socket before anything runs.
func TestImageLogPathChecked(t *testing.T) {
	ih := startImageHelper(t, nil)
	outside := filepath.Join(t.TempDir(), "out.log")
	os.WriteFile(outside, nil, 0o600)
	st := ih.stateDir
	os.Symlink(outside, filepath.Join(st, "link.log"))
	os.Symlink("/etc/passwd", filepath.Join(st, "passwd.log"))
	os.Mkdir(filepath.Join(st, "dir.log"), 0o755)
	syscall.Mkfifo(filepath.Join(st, "fifo.log"), 0o600)
	ctx := context.Background()
	for _, lp := range []string{outside, "/etc/passwd", filepath.Join(st, "link.log"), filepath.Join(st, "passwd.log"),
		filepath.Join(st, "dir.log"), filepath.Join(st, "fifo.log"), filepath.Join(st, "missing.log"), st} {
		for _, c := range []struct {
			method string
			params any
		}{
			{helperapi.MethodImageBootstrap, helperapi.ImageBootstrapParams{BuildID: "x", Suite: "bookworm", Mirror: "http://m/debian", LogPath: lp}},
			{helperapi.MethodImageConfigure, helperapi.ImageConfigureParams{BuildID: "x", Suite: "bookworm", Mirror: "http://m/debian", LogPath: lp}},
			{helperapi.MethodImagePack, helperapi.ImagePackParams{BuildID: "x", OutDir: ih.outDir, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), LogPath: lp}},
		} {
			wantCode(t, c.method+" log "+lp, ih.raw(ctx, c.method, c.params), rpc.CodeBadRequest)
		}
	}
	// Hostile arguments, straight over the socket.
	for _, c := range []struct {
		method string
		params any
	}{
		{helperapi.MethodImageBootstrap, helperapi.ImageBootstrapParams{BuildID: "../x", Suite: "bookworm", Mirror: "http://m/debian", LogPath: ih.logPath}},
		{helperapi.MethodImageBootstrap, helperapi.ImageBootstrapParams{BuildID: "x", Suite: "bookworm", Mirror: "http://m/debian --keyring=/x", LogPath: ih.logPath}},
		{helperapi.MethodImageBootstrap, helperapi.ImageBootstrapParams{BuildID: "x", Suite: "bookworm", Mirror: "http://m/debian", Packages: []string{"--force-yes"}, LogPath: ih.logPath}},
		{helperapi.MethodImageBootstrap, map[string]any{"build_id": "x", "suite": "bookworm", "mirror": "http://m/debian", "log_path": ih.logPath, "tree": "/"}},
		{helperapi.MethodImageDiscard, helperapi.ImageDiscardParams{BuildID: ".."}},
		{helperapi.MethodImageDiscard, helperapi.ImageDiscardParams{BuildID: "a/b"}},
		{helperapi.MethodImagePack, helperapi.ImagePackParams{BuildID: "x", OutDir: "/etc", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), LogPath: ih.logPath}},
		{helperapi.MethodImagePack, helperapi.ImagePackParams{BuildID: "x", OutDir: filepath.Join(st, "link.log"), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), LogPath: ih.logPath}},
	} {
		wantCode(t, c.method+" "+toJSON(c.params), ih.raw(ctx, c.method, c.params), rpc.CodeBadRequest)
	}
	if len(ih.fake.Calls) > 0 {
		t.Errorf("commands ran: %q", ih.fake.Calls)
	}
	// A log owned by someone else than a non-root caller.
	caller := rpc.PeerCred{UID: uint32(os.Getuid()) + 1, GID: 1}
	if _, err := ih.h.openLog(caller, ih.logPath); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("foreign log: %v", err)
	}
	f, err := ih.h.openLog(rpc.PeerCred{UID: uint32(os.Getuid())}, ih.logPath)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// image.pack's own checks: the uid handed files must be the caller's (or
// any allowed one for root), the directory a real one of that uid.
func TestImagePackChecks(t *testing.T) {
	ih := startImageHelper(t, nil)
	me := rpc.PeerCred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	other := rpc.PeerCred{UID: me.UID + 1, GID: me.GID + 1}
	p := helperapi.ImagePackParams{BuildID: "x", OutDir: ih.outDir, UID: me.UID, GID: me.GID, LogPath: ih.logPath}
	ctx := context.Background()
	if me.UID != 0 {
		q := p
		q.UID = 0
		if _, err := ih.h.imagePack(ctx, me, q); rpc.CodeOf(err) != rpc.CodeForbidden {
			t.Errorf("pack for root by a user: %v", err)
		}
	}
	q := p
	q.UID = 4242
	if _, err := ih.h.imagePack(ctx, rpc.PeerCred{UID: 0}, q); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("pack for a uid not allowed: %v", err)
	}
	if _, err := ih.h.openOutDir(ih.outDir, other.UID, other.GID); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("out dir of another uid: %v", err)
	}
	link := filepath.Join(ih.stateDir, "imglink")
	os.Symlink(ih.outDir, link)
	if _, err := ih.h.openOutDir(link, me.UID, me.GID); rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Errorf("out dir through a symlink: %v", err)
	}
	if _, err := ih.h.openOutDir(ih.stateDir, me.UID, me.GID); rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Errorf("the state root itself: %v", err)
	}
	// No build yet: not found, nothing made.
	if _, err := ih.h.imagePack(ctx, me, p); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("pack of a missing build: %v", err)
	}
}

// At start the build dir is made 0700 and emptied of stale builds; a build
// dir reachable by others is refused (image methods off, helper up).
func TestBuildDirPrepared(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "builds")
	os.MkdirAll(filepath.Join(dir, "stale-1", "tree", "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "stale-1", "tree", "etc", "x"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "Foreign.Entry"), 0o755)
	os.Chmod(dir, 0o755)
	hs := startHelper(t, withBuilds(dir, nil))
	if _, err := os.Lstat(filepath.Join(dir, "stale-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale build kept: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "Foreign.Entry")); err != nil {
		t.Errorf("foreign entry removed: %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("build dir mode %v", fi.Mode())
	}
	if !strings.Contains(hs.log.String(), "removed a stale build tree") {
		t.Errorf("log: %s", hs.log.String())
	}

	// Reachable by others: a world-writable parent, a symlink.
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(t.TempDir(), link)
	for _, bad := range []string{filepath.Join(open, "builds"), filepath.Join(link, "builds")} {
		hs := startHelper(t, withBuilds(bad, nil))
		err := hs.raw(context.Background(), helperapi.MethodImageDiscard, helperapi.ImageDiscardParams{BuildID: "x"})
		wantCode(t, "discard with build dir "+bad, err, rpc.CodeUnavailable)
	}
	// None at all.
	hs = startHelper(t)
	wantCode(t, "no build dir", hs.raw(context.Background(), helperapi.MethodImageDiscard, helperapi.ImageDiscardParams{BuildID: "x"}), rpc.CodeUnavailable)
}

func TestCompareVersions(t *testing.T) {
	v := []string{"6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64", "5.10.0-30-cloud-amd64", "6.1.0-10-amd64", "6.12.1-1-cloud-amd64"}
	slices.SortFunc(v, compareVersions)
	want := []string{"5.10.0-30-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-10-amd64", "6.1.0-10-cloud-amd64", "6.12.1-1-cloud-amd64"}
	if !slices.Equal(v, want) {
		t.Errorf("sorted %q", v)
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(make([]byte, 3*chunk), 1<<20) // written zeros become a hole
	f.WriteAt([]byte("mid"), 8<<20+5)
	f.Truncate(32 << 20)
	f.Close()
	in, _ := os.Open(src)
	defer in.Close()
	out, _ := os.Create(filepath.Join(dir, "dst"))
	defer out.Close()
	n, err := copySparse(out, in)
	if err != nil || n != 32<<20 {
		t.Fatal(n, err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(filepath.Join(dir, "dst"))
	if !bytes.Equal(a, b) {
		t.Error("copy differs")
	}
	var st syscall.Stat_t
	syscall.Fstat(int(out.Fd()), &st)
	if st.Blocks*512 > 4*chunk {
		t.Errorf("copy not sparse: %d bytes allocated", st.Blocks*512)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/a\040b/c\011d\134e`); got != "/a b/c\td\\e" {
		t.Errorf("%q", got)
	}
}
