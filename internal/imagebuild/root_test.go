package imagebuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/testutil"
)

// Root tier: real builds with the real mmdebstrap, from the mirror this
// host's apt uses, in the host's network namespace (the only traffic is
// the package download); the hostile-mirror tests serve their archive in
// a network namespace of their own.

const testSuite = "bookworm"

func requireBuildTools(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	for _, tool := range []string{"mmdebstrap", "newuidmap", "newgidmap", "unshare", "chroot", "mke2fs", "e2fsck", "debugfs", "dumpe2fs"} {
		testutil.RequireTool(t, tool)
	}
	if _, err := os.Stat(DebianKeyring); err != nil {
		t.Skipf("needs %s (debian-archive-keyring): %v", DebianKeyring, err)
	}
}

func hostMirror(t *testing.T) (string, string) {
	t.Helper()
	mirror, security, err := testutil.DebianMirror(testSuite)
	if err != nil {
		t.Skipf("no Debian mirror for %s on this host: %v", testSuite, err)
	}
	return mirror, security
}

// A real build as root, through Build as the daemon calls it, checked
// without mounting anything; cached between runs.
func TestBuildRoot(t *testing.T) {
	requireBuildTools(t)
	mirror, security := hostMirror(t)
	key := "imagebuild-root-" + testutil.GuestImageKey(testSuite, mirror, security, guest.BasePackages, agentKey(t))
	dir := testutil.CachedImage(t, key, func(out string) {
		before := tempEntries(t)
		var stages []Event
		var mu sync.Mutex
		res, log, err := buildInto(t, out, Spec{Suite: testSuite, Mirror: mirror, SecurityMirror: security}, func(e Event) {
			mu.Lock()
			stages = append(stages, e)
			mu.Unlock()
		})
		if err != nil {
			t.Fatalf("build: %v\n%s", err, tail(log, 8000))
		}
		t.Logf("built: kernel %s, initrd %s, rootfs %d MiB, work-seed %d MiB", res.KernelVersion, res.Initrd, res.RootfsSize>>20, res.WorkSeedSize>>20)
		if len(stages) != 2 || stages[0].Stage != "configure" || stages[1].Stage != "pack" || stages[1].KernelVersion != res.KernelVersion {
			t.Errorf("stages %+v", stages)
		}
		if res.Initrd != InitrdMini || res.Rootfs != filepath.Join(out, OutRootfs) {
			t.Errorf("result %+v", res)
		}
		checkNoLeftovers(t, before)
	})
	checkImage(t, dir)
}

// buildInto runs Build into out with a build.log there, as the daemon
// does, and returns the log's text.
func buildInto(t *testing.T, out string, spec Spec, onStage func(Event)) (Result, string, error) {
	t.Helper()
	logPath := filepath.Join(out, "build.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	start := time.Now()
	res, err := Build(context.Background(), spec, Options{OutDir: out, Log: logf, LogPath: logPath, OnStage: onStage, Agent: testAgent(t)})
	t.Logf("Build took %s", time.Since(start).Round(100*time.Millisecond))
	b, _ := os.ReadFile(logPath)
	return res, string(b), err
}

// tempEntries lists /tmp and /var/tmp.
func tempEntries(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, d := range []string{"/tmp", "/var/tmp"} {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

// checkNoLeftovers fails t if /tmp or /var/tmp gained an entry since
// before (one named by the build: other tests share these directories),
// or a process of the build is left.
func checkNoLeftovers(t *testing.T, before []string) {
	t.Helper()
	for _, e := range tempEntries(t) {
		base := filepath.Base(e)
		if !slices.Contains(before, e) && (strings.HasPrefix(base, workPrefix) || strings.HasPrefix(base, "mmdebstrap")) {
			t.Errorf("left behind: %s", e)
		}
	}
	if p := buildProcesses(); len(p) > 0 {
		t.Errorf("build processes left: %v", p)
	}
}

// buildProcesses lists processes that belong to a build: mmdebstrap, or a
// command line naming a work directory.
func buildProcesses() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		s := strings.ReplaceAll(string(cl), "\x00", " ")
		if strings.Contains(s, "mmdebstrap") || strings.Contains(s, "/"+workPrefix) {
			out = append(out, e.Name()+": "+s)
		}
	}
	return out
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

// checkImage checks a built image without mounting it: what the guest
// contract puts there, what the build must not leave, the seed, kernel and
// initrd.
func checkImage(t *testing.T, dir string) {
	t.Helper()
	rootfs := filepath.Join(dir, OutRootfs)
	seed := filepath.Join(dir, OutWorkSeed)
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
	if s := stat("/usr/sbin/sshd"); !strings.Contains(s, "Type: regular") || !strings.Contains(s, "Mode:  0755") || !strings.Contains(s, "User:     0   Group:     0") {
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
	// Nothing of mmdebstrap's build is left.
	for _, p := range []string{"/etc/apt/apt.conf.d/00mmdebstrap", "/etc/apt/apt.conf.d/99mmdebstrap", "/usr/sbin/policy-rc.d",
		"/usr/sbin/start-stop-daemon.REAL", "/var/log/apt/history.log", "/var/log/dpkg.log"} {
		if s := stat(p); !strings.Contains(s, "File not found") && s != "" {
			t.Errorf("%s is in the image:\n%s", p, s)
		}
	}
	if s := stat("/usr/sbin/start-stop-daemon"); !strings.Contains(s, "Type: regular") || !strings.Contains(s, "Size: ") || strings.Contains(s, "Size: 8") {
		t.Errorf("start-stop-daemon (the real one, not mmdebstrap's fake):\n%s", s)
	}
	if fake := debugfs(t, rootfs, "cat /usr/sbin/start-stop-daemon"); strings.Contains(fake, "Fake start-stop-daemon") {
		t.Errorf("mmdebstrap's fake start-stop-daemon is in the image")
	}
	// /dev as debootstrap leaves it: device nodes, links, two empty
	// directories; /proc and /sys empty; /root an empty 0700 mountpoint.
	devls := debugfs(t, rootfs, "ls -l /dev")
	for _, d := range devNodes {
		if !strings.Contains(devls, " "+d.name+"\n") && !strings.HasSuffix(strings.TrimSpace(devls), " "+d.name) {
			t.Errorf("/dev/%s missing:\n%s", d.name, devls)
		}
	}
	if s := stat("/dev/null"); !strings.Contains(s, "Type: character special") || !strings.Contains(s, "Mode:  0666") || !strings.Contains(s, "User:     0   Group:     0") {
		t.Errorf("/dev/null:\n%s", s)
	}
	for _, d := range []string{"/proc", "/sys", "/root"} {
		if ls := strings.Fields(debugfs(t, rootfs, "ls "+d)); len(ls) > 0 && !onlyDots(ls) {
			t.Errorf("%s is not empty: %q", d, ls)
		}
	}
	if s := stat("/root"); !strings.Contains(s, "Mode:  0700") || !strings.Contains(s, "User:     0   Group:     0") {
		t.Errorf("/root:\n%s", s)
	}
	modules := debugfs(t, rootfs, "ls /usr/lib/modules")
	kver := regexp.MustCompile(`[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-cloud-amd64`).FindString(modules)
	if kver == "" {
		t.Fatalf("no cloud kernel in /lib/modules: %q", modules)
	}
	if s := stat("/usr/lib/modules/" + kver + "/modules.dep"); !strings.Contains(s, "Type: regular") {
		t.Errorf("modules.dep of %s:\n%s", kver, s)
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
	if out, _ := exec.Command("dumpe2fs", "-h", seed).Output(); !bytes.Contains(out, []byte("Filesystem volume name:   banger-work")) || !bytes.Contains(out, []byte("Block size:               4096")) {
		t.Errorf("work-seed label or block size:\n%s", out)
	}

	// Kernel, initrd, config.
	kernel, _ := os.ReadFile(filepath.Join(dir, OutKernel))
	if len(kernel) < 1<<20 || string(kernel[0x202:0x206]) != "HdrS" {
		t.Errorf("vmlinuz is not a bzImage (%d bytes)", len(kernel))
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, OutKernelConfig))
	if !bytes.Contains(cfg, []byte("CONFIG_VIRTIO_MMIO=m")) {
		t.Errorf("kernel.config lacks CONFIG_VIRTIO_MMIO=m")
	}
	initrd, err := os.Open(filepath.Join(dir, OutInitrd))
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
	for _, name := range outNames {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v %v", name, fi.Mode(), err)
		}
	}
}

func modulePaths() []string {
	var out []string
	for _, m := range guest.InitrdModules {
		out = append(out, "lib/modules/"+m+".ko")
	}
	return out
}

var numberRE = regexp.MustCompile(`^\d+$`)

func onlyDots(ls []string) bool {
	for _, f := range ls {
		if f != "." && f != ".." && !strings.HasPrefix(f, "(") && !numberRE.MatchString(f) {
			return false
		}
	}
	return true
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// envChild tells the test binary it is a child of an unprivileged-build
// test (childMain); envChildArgs carries its arguments (childArgs, JSON).
const (
	envChild     = "BANGER_IMAGEBUILD_TEST_CHILD"
	envChildArgs = "BANGER_IMAGEBUILD_TEST_ARGS"
)

// childArgs are an unprivileged build's arguments.
type childArgs struct {
	Spec    Spec     `json:"spec"`
	OutDir  string   `json:"out_dir"`
	Keyring Keyrings `json:"keyrings,omitempty"`
	// SubUID and SubGID are files bind-mounted over /etc/subuid and
	// /etc/subgid by the "mountns" child.
	SubUID, SubGID string
	UID            int
	Exe            string
	// Agent is a banger-agent the uid can read.
	Agent string
}

// childResult is what the "build" child prints on its last line.
type childResult struct {
	Result Result `json:"result"`
	Error  string `json:"error,omitempty"`
	Stages int    `json:"stages"`
}

// childMain is the test binary as a child:
//
//	mountns: root, in a new mount namespace (made private first), with the
//	         test's subuid/subgid files bound over /etc's; runs "build".
//	build:   as the unprivileged uid; runs Build and prints a childResult.
func childMain() int {
	var a childArgs
	if err := json.Unmarshal([]byte(os.Getenv(envChildArgs)), &a); err != nil {
		fmt.Println("child: bad args:", err)
		return 2
	}
	switch os.Getenv(envChild) {
	case "mountns":
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fmt.Println("child: private mounts:", err)
			return 2
		}
		if _, err := bindSubIDs(a.SubUID, a.SubGID); err != nil {
			fmt.Println("child:", err)
			return 2
		}
		cmd := userBuildCmd(a)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Println("child: build child:", err)
			return 1
		}
		return 0
	case "build":
		logPath := filepath.Join(a.OutDir, "build.log")
		logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Println("child:", err)
			return 2
		}
		stages := 0
		res, err := Build(context.Background(), a.Spec, Options{OutDir: a.OutDir, Log: logf, LogPath: logPath, Keyrings: a.Keyring, Agent: a.Agent,
			OnStage: func(Event) { stages++ }})
		r := childResult{Result: res, Stages: stages}
		if err != nil {
			r.Error = err.Error()
		}
		raw, _ := json.Marshal(r)
		fmt.Printf("\nCHILD RESULT %s\n", raw)
		return 0
	}
	return 2
}

// bindSubIDs gives this (private) mount namespace the contents of the
// files as /etc/subuid and /etc/subgid (testutil.PrivateEtcFiles: bound
// over the host's, or an overlay of /etc when the host has none).
func bindSubIDs(subuid, subgid string) (func(), error) {
	files := map[string]string{}
	for name, src := range map[string]string{"subuid": subuid, "subgid": subgid} {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[name] = string(b)
	}
	return testutil.PrivateEtcFiles(filepath.Dir(subuid), files)
}

// userBuildCmd runs the "build" child as a.UID (its group too, no
// supplementary groups; root stays root) from a.Exe, a copy of the test
// binary that uid can run.
func userBuildCmd(a childArgs) *exec.Cmd {
	raw, _ := json.Marshal(a)
	cmd := exec.Command(a.Exe)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", envChild + "=build", envChildArgs + "=" + string(raw)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if a.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.UID), Groups: []uint32{}}
	}
	return cmd
}

// userBuild is an unprivileged build's setup: a directory every uid can
// reach holding a copy of the test binary, the output directory (the
// uid's, 0700) and subuid/subgid files giving the uid 65536 ids.
type userBuild struct {
	dir  string
	args childArgs
}

// testUID is the unprivileged uid of the tests (nobody, which has a name:
// mmdebstrap looks /etc/subuid up by name), and testSubIDs its range.
const (
	testUID    = 65534
	testSubIDs = 300000
)

func newUserBuild(t *testing.T, spec Spec) *userBuild {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-imagebuild-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyExe := filepath.Join(dir, "imagebuild.test")
	if err := copyExecutable(exe, copyExe); err != nil {
		t.Fatal(err)
	}
	os.Chmod(copyExe, 0o755)
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(out, testUID, testUID); err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("nobody:%d:65536\n", testSubIDs)
	subuid, subgid := filepath.Join(dir, "subuid"), filepath.Join(dir, "subgid")
	for _, f := range []string{subuid, subgid} {
		if err := os.WriteFile(f, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &userBuild{dir: dir, args: childArgs{Spec: spec, OutDir: out, SubUID: subuid, SubGID: subgid, UID: testUID, Exe: copyExe, Agent: testAgent(t)}}
}

// run runs the build as the uid, from a new private mount namespace (the
// "mountns" child) when mountNS, else from this process, which must be in
// a private mount namespace already (InNetNS's child), with the subuid
// files bound here. It returns the child's result and output.
func (u *userBuild) run(t *testing.T, mountNS bool) (childResult, string) {
	t.Helper()
	raw, _ := json.Marshal(u.args)
	var cmd *exec.Cmd
	if mountNS {
		cmd = exec.Command(u.args.Exe)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", envChild + "=mountns", envChildArgs + "=" + string(raw)}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	} else {
		undo, err := bindSubIDs(u.args.SubUID, u.args.SubGID)
		if err != nil {
			t.Fatal(err)
		}
		defer undo()
		cmd = userBuildCmd(u.args)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build child: %v\n%s", err, out)
	}
	i := bytes.LastIndex(out, []byte("CHILD RESULT "))
	if i < 0 {
		t.Fatalf("no result from the build child:\n%s", out)
	}
	var r childResult
	line, _, _ := strings.Cut(string(out[i+len("CHILD RESULT "):]), "\n")
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("child result %q: %v", line, err)
	}
	return r, string(out)
}

// A real build as an unprivileged uid whose subordinate ids come from a
// private /etc/subuid: the files are that uid's, and nothing is left in
// /tmp, /var/tmp or the process table. Cached under a key of its own.
func TestBuildAsUserRoot(t *testing.T) {
	requireBuildTools(t)
	mirror, security := hostMirror(t)
	key := "imagebuild-user-" + testutil.GuestImageKey(testSuite, mirror, security, guest.BasePackages, agentKey(t))
	dir := testutil.CachedImage(t, key, func(cache string) {
		u := newUserBuild(t, Spec{Suite: testSuite, Mirror: mirror, SecurityMirror: security})
		before := tempEntries(t)
		r, out := u.run(t, true)
		log, _ := os.ReadFile(filepath.Join(u.args.OutDir, "build.log"))
		if r.Error != "" {
			t.Fatalf("build as uid %d: %s\n%s\n%s", testUID, r.Error, out, tail(string(log), 8000))
		}
		if r.Stages != 2 {
			t.Errorf("%d stages reported, want 2", r.Stages)
		}
		if !strings.Contains(string(log), fmt.Sprintf("as uid %d", testUID)) {
			t.Errorf("the log does not say the build ran as uid %d", testUID)
		}
		for _, name := range append(slices.Clone(outNames), "build.log") {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(u.args.OutDir, name), &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != testUID || st.Gid != testUID {
				t.Errorf("%s is owned by %d:%d, want %d", name, st.Uid, st.Gid, testUID)
			}
		}
		checkNoLeftovers(t, before)
		for _, name := range outNames {
			if err := os.Rename(filepath.Join(u.args.OutDir, name), filepath.Join(cache, name)); err != nil {
				t.Fatal(err)
			}
		}
	})
	checkImage(t, dir)
}
