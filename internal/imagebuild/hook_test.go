package imagebuild

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/runner"
)

const testKver = "6.1.0-9-cloud-amd64"

// fakeTree is what mmdebstrap leaves when the customize hook runs, in
// miniature: a Debian tree with mmdebstrap's build leftovers.
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
		"etc/apt/apt.conf.d/00mmdebstrap":                  "Apt::Install-Recommends false;\n",
		"etc/apt/apt.conf.d/99mmdebstrap":                  "Dir::Etc::TrustedParts \"/var/tmp/x/trusted.gpg.d\";\n",
		"etc/apt/apt.conf.d/70debconf":                     "// debconf\n",
		"etc/initramfs-tools/initramfs.conf":               "MODULES=most\n",
		"var/cache/apt/archives/x.deb":                     "deb",
		"var/cache/apt/pkgcache.bin":                       "bin",
		"var/lib/apt/lists/partial/y":                      "list",
		"var/log/dpkg.log":                                 "log",
		"var/log/apt/history.log":                          "apt log",
		"var/log/apt/term.log":                             "apt log",
		"usr/sbin/policy-rc.d":                             "#!/bin/sh\nexit 101\n",
		"usr/sbin/start-stop-daemon":                       "#!/bin/sh\necho \"Warning: Fake start-stop-daemon called, doing nothing\">&2\n",
		"usr/sbin/start-stop-daemon.REAL":                  "\x7fELF the real one",
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
	// merged /usr, as the merged-usr hooks make it
	for _, l := range []string{"bin", "lib", "sbin"} {
		if err := os.Symlink("usr/"+l, filepath.Join(tree, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "etc/systemd/system/multi-user.target.wants"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	// mmdebstrap's bind-mount points in /dev (empty files, as in unshare mode)
	os.WriteFile(filepath.Join(tree, "dev/null"), nil, 0o644)
	os.MkdirAll(filepath.Join(tree, "tmp"), 0o1777)
	os.WriteFile(filepath.Join(tree, "tmp/mmdebstrap.apt.conf.XXXX"), []byte("Dir \"/x\";\n"), 0o644)
	os.Chmod(filepath.Join(tree, "root"), 0o700)
}

// fakeMounter plays the hook's mounts on a plain directory: the tree
// starts with mmdebstrap's mounts; detach drops a mount and those under
// it; tmpfs "hides" a directory by moving its entries aside (into a
// directory named .hidden-NAME next to the tree) and records the mode.
type fakeMounter struct {
	t       *testing.T
	tree    string
	mounts  []string
	calls   []string
	private bool
}

func (m *fakeMounter) makePrivate() error { m.private = true; return nil }

func (m *fakeMounter) detach(p string) error {
	m.calls = append(m.calls, "detach "+strings.TrimPrefix(p, m.tree))
	m.mounts = slices.DeleteFunc(m.mounts, func(x string) bool { return x == p || strings.HasPrefix(x, p+"/") })
	return nil
}

func (m *fakeMounter) tmpfs(p string, mode fs.FileMode) error {
	if !strings.HasPrefix(p, "/proc/self/fd/") {
		return fmt.Errorf("tmpfs on %q: not a descriptor's path", p)
	}
	real, err := os.Readlink(p)
	if err != nil {
		return err
	}
	m.calls = append(m.calls, fmt.Sprintf("tmpfs %s %04o", strings.TrimPrefix(real, m.tree), mode))
	aside := filepath.Join(filepath.Dir(m.tree), ".hidden-"+filepath.Base(real))
	if err := os.Rename(real, aside); err != nil {
		return err
	}
	if err := os.Mkdir(real, mode); err != nil {
		return err
	}
	m.mounts = append(m.mounts, real)
	return os.Chmod(real, mode)
}

func (m *fakeMounter) mountsUnder(dir string) []string {
	var out []string
	for _, x := range m.mounts {
		if x == dir || strings.HasPrefix(x, dir+"/") {
			out = append(out, x)
		}
	}
	return out
}

// fdRunner resolves the /proc/self/fd/N arguments of each command to what
// they name ("fd:PATH", "memfd:CONTENT" for a memfd, "scratch:NAME" for a
// scratch file of the hook's under scratch, which has no name any more)
// before handing the argv to a runner.Fake, then plays the command's side
// effect.
type fdRunner struct {
	fake    *runner.Fake
	scratch string
	sides   func(argv []string) error
}

func (r *fdRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	resolved := slices.Clone(argv)
	for i, a := range resolved {
		if !strings.HasPrefix(a, "/proc/self/fd/") {
			continue
		}
		target, err := os.Readlink(a)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(target, "/memfd:") {
			b, err := os.ReadFile(a)
			if err != nil {
				return nil, err
			}
			resolved[i] = "memfd:" + string(b)
			continue
		}
		if rest, ok := strings.CutPrefix(target, r.scratch+"/banger-pack-"); ok && strings.HasSuffix(rest, " (deleted)") {
			resolved[i] = "scratch:" + filepath.Base(strings.TrimSuffix(rest, " (deleted)"))
			continue
		}
		resolved[i] = "fd:" + target
	}
	out, err := r.fake.Run(ctx, resolved[0], resolved[1:]...)
	if err == nil && r.sides != nil {
		err = r.sides(argv)
	}
	return out, err
}

// hookHarness is a hook on a miniature tree with fake commands and mounts,
// its outputs in a temp dir, its status in a buffer.
type hookHarness struct {
	h       *hook
	tree    string
	outDir  string
	scratch string
	fake    *runner.Fake
	mnt     *fakeMounter
	log     *bytes.Buffer
	status  *bytes.Buffer
}

func newHookHarness(t *testing.T, variant string) *hookHarness {
	t.Helper()
	base := t.TempDir()
	tree := filepath.Join(base, "mmdebstrap.test")
	os.Mkdir(tree, 0o755)
	fakeTree(t, tree)
	outDir := filepath.Join(base, "out")
	os.Mkdir(outDir, 0o700)
	outs, err := createOutputs(outDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(outs.close)
	agent := filepath.Join(base, "agent")
	if err := os.WriteFile(agent, []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(base, "scratch")
	os.Mkdir(scratch, 0o1777)
	hh := &hookHarness{tree: tree, outDir: outDir, scratch: scratch, fake: &runner.Fake{}, log: &bytes.Buffer{}, status: &bytes.Buffer{}}
	hh.mnt = &fakeMounter{t: t, tree: tree, mounts: []string{tree + "/proc", tree + "/sys", tree + "/sys/fs/cgroup", tree + "/dev/null"}}
	hh.h = &hook{
		path: tree,
		params: hookParams{Protocol: hookProtocol, Suite: "bookworm", Mirror: "http://deb.debian.org/debian", SecurityMirror: "http://deb.debian.org/debian-security", Variant: variant, Agent: agent,
			Scratch: scratch},
		run: &fdRunner{fake: hh.fake, scratch: scratch, sides: func(argv []string) error {
			if argv[0] != "mke2fs" {
				return nil
			}
			// mke2fs IMG SIZE: a sparse file of SIZE with data at the
			// start and the end only.
			img, size := argv[len(argv)-2], argv[len(argv)-1]
			var mib int64
			fmt.Sscanf(size, "%dM", &mib)
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			f.WriteAt([]byte("ext4 superblock"), 1024)
			f.WriteAt([]byte("end"), mib<<20-3)
			return nil
		}},
		mnt: hh.mnt,
		log: hh.log,
		out: outputs{rootfs: outs.files[0], seed: outs.files[1], kernel: outs.files[2], initrd: outs.files[3], config: outs.files[4]},
	}
	return hh
}

func (hh *hookHarness) statusLines(t *testing.T) []status {
	t.Helper()
	var out []status
	for _, l := range strings.Split(strings.TrimSpace(hh.status.String()), "\n") {
		if l == "" {
			continue
		}
		var s status
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("status line %q: %v", l, err)
		}
		out = append(out, s)
	}
	return out
}

// The hook's whole work on a miniature tree: the exact argv of every
// command, what configure writes and removes, what pack hides and packs,
// the status it reports, the files it fills.
func TestHookSteps(t *testing.T) {
	hh := newHookHarness(t, "")
	tree, out := hh.tree, hh.outDir
	hh.fake.Expect("chroot", tree, "update-initramfs", "-c", "-k", testKver)
	// The commands work on the hook's own scratch files (unnamed: nothing
	// can link them), never on the output files, which the hook fills
	// through their descriptors; so the output files can stay 0600, the
	// daemon's user's only, while the build runs.
	hh.fake.Expect("mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-work", "-m", "0", "-E", "root_owner=0:0",
		"-d", "fd:"+tree+"/root", "scratch:work-seed.ext4", "16M")
	hh.fake.Expect("debugfs", "-w", "-R", "sif / mode 040700", "scratch:work-seed.ext4")
	hh.fake.Expect("mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-root", "-m", "0", "-E", "root_owner=0:0",
		"-d", tree, "scratch:rootfs.ext4", "65M")
	hh.fake.Expect("debugfs", "-w", "-f", "memfd:"+devRequests(), "scratch:rootfs.ext4")
	hh.fake.Expect("e2fsck", "-fn", "scratch:rootfs.ext4")
	hh.fake.Expect("e2fsck", "-fn", "scratch:work-seed.ext4")

	if err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status}); err != nil {
		t.Fatalf("hook: %v\n%s", err, hh.log)
	}
	if u := hh.fake.Unmet(); len(u) > 0 {
		t.Errorf("commands not run: %q", u)
	}
	if !hh.mnt.private {
		t.Error("mounts not made private first")
	}
	checkConfiguredTree(t, tree)

	// The status: configure, pack with the kernel, done with the sizes.
	st := hh.statusLines(t)
	want := []status{{Stage: "configure"}, {Stage: "pack", KernelVersion: testKver, Initrd: InitrdMini},
		{Done: true, KernelVersion: testKver, Initrd: InitrdMini, RootfsSize: 65 << 20, WorkSeedSize: 16 << 20}}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("status\n got %+v\nwant %+v", st, want)
	}

	// Mounts: every mmdebstrap mount detached, the shortest path first
	// (so /sys/fs/cgroup goes with /sys); tmpfs over /root (its mode) and
	// /dev.
	wantCalls := []string{"detach /sys", "detach /proc", "detach /dev/null", "tmpfs /root 0700", "tmpfs /dev 0755"}
	if !slices.Equal(hh.mnt.calls, wantCalls) {
		t.Errorf("mount calls %q, want %q", hh.mnt.calls, wantCalls)
	}
	// The /dev the rootfs gets: the directories and links (the nodes are
	// debugfs's), nothing of mmdebstrap's.
	var devWant []string
	for _, d := range devNodes {
		if d.dir || d.target != "" {
			devWant = append(devWant, d.name)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(tree, "dev"))
	var devGot []string
	for _, e := range ents {
		devGot = append(devGot, e.Name())
	}
	if !slices.Equal(devGot, devWant) {
		t.Errorf("/dev holds %q, want %q", devGot, devWant)
	}
	if l, _ := os.Readlink(filepath.Join(tree, "dev/stdin")); l != "/proc/self/fd/0" {
		t.Errorf("/dev/stdin -> %q", l)
	}
	if ents, _ := os.ReadDir(filepath.Join(tree, "root")); len(ents) != 0 {
		t.Errorf("/root (for the rootfs) is not empty: %v", ents)
	}

	// The files.
	sizes := map[string]int64{}
	for _, name := range outNames {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(out, name), &st); err != nil {
			t.Fatal(err)
		}
		sizes[name] = st.Size
		if name == OutRootfs && st.Blocks*512 > 1<<20 {
			t.Errorf("rootfs.ext4 is not sparse: %d bytes allocated", st.Blocks*512)
		}
	}
	if sizes[OutRootfs] != 65<<20 || sizes[OutWorkSeed] != 16<<20 {
		t.Errorf("sizes %v", sizes)
	}
	// What mke2fs wrote (in the scratch file) is what the output holds.
	if img, _ := os.ReadFile(filepath.Join(out, OutRootfs)); len(img) != 65<<20 || string(img[1024:1024+15]) != "ext4 superblock" || string(img[len(img)-3:]) != "end" {
		t.Errorf("rootfs.ext4 does not hold what mke2fs made")
	}
	// Nothing is left in the scratch directory, and the outputs are 0600
	// with one link each.
	if ents, _ := os.ReadDir(hh.scratch); len(ents) != 0 {
		t.Errorf("scratch left: %v", ents)
	}
	for _, name := range outNames {
		var st syscall.Stat_t
		syscall.Stat(filepath.Join(out, name), &st)
		if st.Mode&0o777 != 0o600 || st.Nlink != 1 {
			t.Errorf("%s: mode %o, %d links while building, want 0600 and 1", name, st.Mode&0o777, st.Nlink)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(out, OutKernel)); !strings.HasPrefix(string(got), "MZ kernel") || len(got) != 70000+len("MZ kernel ") {
		t.Errorf("vmlinuz: %d bytes", len(got))
	}
	if got, _ := os.ReadFile(filepath.Join(out, OutKernelConfig)); string(got) != "CONFIG_VIRTIO_MMIO=m\n" {
		t.Errorf("kernel.config %q", got)
	}
	// The mini initrd, not the tree's initramfs-tools one.
	if got, _ := os.ReadFile(filepath.Join(out, OutInitrd)); !bytes.HasPrefix(got, []byte{0x1f, 0x8b}) {
		t.Errorf("initrd.img is not the mini initrd: %q", got[:min(len(got), 20)])
	}

	log := hh.log.String()
	for _, want := range []string{"==> configure: writing ", "==> configure: kernel " + testKver, "==> configure: update-initramfs for " + testKver,
		"==> configure: restoring /sbin/start-stop-daemon", "==> configure: mini initrd: ", "==> pack: rootfs.ext4: 65 MiB",
		"==> pack: checking rootfs.ext4", "==> pack: done"} {
		if !strings.Contains(log, want) {
			t.Errorf("build log lacks %q:\n%s", want, log)
		}
	}
}

// The stock variant keeps Debian's units and boots the tree's own initrd.
func TestHookStockVariant(t *testing.T) {
	hh := newHookHarness(t, guest.VariantStock)
	r := &recordRunner{}
	hh.h.run = r
	if err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status}); err != nil {
		t.Fatalf("hook: %v\n%s", err, hh.log)
	}
	st := hh.statusLines(t)
	if len(st) != 3 || st[1].Initrd != InitrdTools || st[2].Initrd != InitrdTools {
		t.Errorf("status %+v", st)
	}
	if got, _ := os.ReadFile(filepath.Join(hh.outDir, OutInitrd)); string(got) != "initramfs-tools initrd" {
		t.Errorf("initrd.img %q, want the tree's", got)
	}
	if _, err := os.Lstat(filepath.Join(hh.tree, "etc/systemd/system/systemd-udevd.service")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stock image masks udev: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(hh.tree, "etc/fstab")); !bytes.Equal(b, guestFile(t, guest.VariantStock, "/etc/fstab")) {
		t.Errorf("stock fstab %q", b)
	}
	if len(r.calls) == 0 || !slices.Equal(r.calls[0], []string{"chroot", hh.tree, "update-initramfs", "-c", "-k", testKver}) {
		t.Errorf("commands %q", r.calls)
	}
}

// recordRunner records commands, runs nothing and fails nothing.
type recordRunner struct{ calls [][]string }

func (r *recordRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, append([]string{name}, args...))
	return nil, nil
}

func guestFile(t *testing.T, variant, path string) []byte {
	for _, f := range guest.FilesFor(variant) {
		if f.Path == path {
			return f.Content
		}
	}
	t.Fatalf("no %s in the %s variant", path, variant)
	return nil
}

// checkConfiguredTree checks what configure wrote and removed.
func checkConfiguredTree(t *testing.T, tree string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Errorf("%v", err)
		}
		return string(b)
	}
	if got := read(guest.AgentPath); got != fakeAgent {
		t.Errorf("%s = %q, want the build's banger-agent", guest.AgentPath, got)
	}
	if fi, err := os.Stat(filepath.Join(tree, guest.AgentPath)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("%s: %v %v", guest.AgentPath, fi, err)
	}
	for _, f := range guest.Files() {
		if f.Path == "/root/.ssh" {
			continue // under the tmpfs that hides /root: checked in the seed
		}
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
	if fi, err := os.Lstat(filepath.Join(filepath.Dir(tree), ".hidden-root", ".ssh")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("/root/.ssh (the seed's): %v %v", fi, err)
	}
	if got := read("/etc/apt/sources.list"); got != "deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n" {
		t.Errorf("sources.list: %q", got)
	}
	for _, gone := range []string{"etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_ed25519_key.pub", "var/cache/apt/archives/x.deb",
		"var/cache/apt/pkgcache.bin", "var/lib/apt/lists/partial", "var/log/dpkg.log", "tmp/mmdebstrap.apt.conf.XXXX",
		"etc/apt/apt.conf.d/00mmdebstrap", "etc/apt/apt.conf.d/99mmdebstrap", "usr/sbin/policy-rc.d", "usr/sbin/start-stop-daemon.REAL",
		"var/log/apt/history.log", "var/log/apt/term.log", "etc/update-motd.d"} {
		if _, err := os.Lstat(filepath.Join(tree, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", gone, err)
		}
	}
	if read("/usr/sbin/start-stop-daemon") != "\x7fELF the real one" {
		t.Error("start-stop-daemon is not the real one")
	}
	if read("/etc/machine-id") != "" || read("/etc/hostname") != "banger\n" {
		t.Error("machine-id or hostname not reset")
	}
	if !strings.Contains(read("/etc/fstab"), "/dev/vdb\t/root\text4") {
		t.Error("fstab")
	}
	// The rest of the tree is untouched.
	if read("/etc/ssh/sshd_config") != "# stock\n" || read("/etc/apt/apt.conf.d/70debconf") != "// debconf\n" {
		t.Error("a file that is not banger's changed")
	}
}

// A failing command fails its stage with an error saying what failed;
// the status says which stage, the log has a FAILED line.
func TestHookCommandFailure(t *testing.T) {
	hh := newHookHarness(t, "")
	hh.fake.Expect("chroot", hh.tree, "update-initramfs", "-c", "-k", testKver).Fails(errors.New("exit status 1"))
	err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status})
	if err == nil || !strings.Contains(err.Error(), "configure: update-initramfs for "+testKver+" (chroot) failed") {
		t.Fatalf("err %v", err)
	}
	st := hh.statusLines(t)
	if len(st) != 2 || st[1].Stage != "configure" || !strings.Contains(st[1].Error, "update-initramfs") {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(hh.log.String(), "==> configure: FAILED: update-initramfs") {
		t.Errorf("log:\n%s", hh.log)
	}
	// Nothing packed.
	for _, name := range outNames {
		if fi, _ := os.Stat(filepath.Join(hh.outDir, name)); fi.Size() != 0 {
			t.Errorf("%s written after a failed configure", name)
		}
	}
}

// A status line that cannot be written (Build gone) stops the hook before
// it does anything.
func TestHookStopsWhenBuildGone(t *testing.T) {
	hh := newHookHarness(t, "")
	err := hh.h.runSteps(context.Background(), &statusWriter{w: brokenPipe{}})
	if err == nil || !strings.Contains(err.Error(), "bangerd gone") {
		t.Fatalf("err %v", err)
	}
	if len(hh.fake.Calls) > 0 || hh.log.Len() > 0 {
		t.Errorf("the hook went on: %q\n%s", hh.fake.Calls, hh.log)
	}
}

type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// A symlink planted in the tree never sends a write through it, nor a
// mount, nor mke2fs.
func TestHookRefusesSymlinks(t *testing.T) {
	outside := t.TempDir()
	hh := newHookHarness(t, "")
	// /usr/local -> a directory outside the tree
	if err := os.Symlink(outside, filepath.Join(hh.tree, "usr", "local")); err != nil {
		t.Fatal(err)
	}
	err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status})
	if err == nil || !strings.Contains(err.Error(), "/usr/local in the tree is not a directory") {
		t.Errorf("configure through a symlink: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside the tree: %v", ents)
	}

	// Directly: a file that is a symlink is replaced, not followed.
	tr, err := openTree(hh.tree)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)
	os.Remove(filepath.Join(hh.tree, "etc", "fstab"))
	if err := os.Symlink(victim, filepath.Join(hh.tree, "etc", "fstab")); err != nil {
		t.Fatal(err)
	}
	if err := tr.write(guest.File{Path: "/etc/fstab", Mode: 0o644, Content: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("write followed the symlink: victim now %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(hh.tree, "etc", "fstab")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("fstab not replaced by a file: %v %v", fi, err)
	}
	if err := tr.write(guest.File{Path: "/etc/../../x", Mode: 0o644}); err == nil {
		t.Error("unclean path written")
	}

	// /root and /dev as symlinks: pack refuses before packing or mounting.
	for _, dir := range []string{"root", "dev"} {
		hh := newHookHarness(t, "")
		os.RemoveAll(filepath.Join(hh.tree, dir))
		os.Symlink(outside, filepath.Join(hh.tree, dir))
		hh.h.run = &recordRunner{}
		err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status})
		if err == nil || !strings.Contains(err.Error(), "/"+dir) {
			t.Errorf("%s as a symlink: %v", dir, err)
		}
		for _, c := range hh.mnt.calls {
			if strings.HasPrefix(c, "tmpfs") && strings.Contains(c, outside) {
				t.Errorf("mounted through the symlink: %s", c)
			}
		}
		for _, c := range hh.h.run.(*recordRunner).calls {
			if slices.Contains(c, outside) || (c[0] == "mke2fs" && dir == "root") {
				t.Errorf("%s as a symlink: ran %q", dir, c)
			}
		}
	}
}

// The rootfs size: automatic is the tree plus 20% plus 64 MiB; a size
// given must hold 110% of the tree.
func TestHookRootfsSize(t *testing.T) {
	hh := newHookHarness(t, "")
	hh.h.params.RootfsSize = 64 << 20
	os.WriteFile(filepath.Join(hh.tree, "usr/big"), bytes.Repeat([]byte{1}, 60<<20), 0o644)
	hh.h.run = &recordRunner{}
	err := hh.h.runSteps(context.Background(), &statusWriter{w: hh.status})
	if err == nil || !strings.Contains(err.Error(), "the rootfs needs at least 67 MiB") {
		t.Fatalf("too small a rootfs: %v", err)
	}
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
	n, err := copyInto(out, in)
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

// devRequests makes every character device of devNodes, 0666.
func TestDevRequests(t *testing.T) {
	r := devRequests()
	for _, want := range []string{"cd /dev\n", "mknod null c 1 3\nsif null mode 020666\n", "mknod console c 5 1\n", "mknod ptmx c 5 2\n"} {
		if !strings.Contains(r, want) {
			t.Errorf("requests lack %q:\n%s", want, r)
		}
	}
	if strings.Contains(r, "stdin") || strings.Contains(r, "pts") {
		t.Errorf("links or directories made by debugfs:\n%s", r)
	}
}

// fakeAgent stands in for banger-agent in the hook's unit tests.
const fakeAgent = "not really banger-agent\n"
