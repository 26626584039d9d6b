// Package bench measures VM creation end to end (scripts/bench-create):
// banger's create to agent-ready and the same boot to SSH-ready, against a
// bare qemu boot of the same image, per-stage times, a command through the
// agent against one over SSH, vm cp against scp (256 MiB each way), the work disk from the seed against from scratch, a TAP
// from the pool against a new one, `banger vm list` over 200 VMs, and
// snapshots (snapshot_bench_test.go: cold against warm creates, forks, 10
// warm creates at once, pause and resume, Pss of clones). It
// prints a table and writes the figures as JSON. It asserts nothing about
// speed: it is a measurement, run on demand (BANGER_BENCH=1), not a test.
// Each run interleaves a banger create, a bare boot of the same image and a
// bare boot of the stock image, in an order that rotates from run to run, so
// a noisy host weighs on all three alike.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	bimage "github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/qemu"
	"github.com/banger-dev/banger/tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// series is a named list of durations in milliseconds.
type series struct {
	Name    string    `json:"name"`
	Samples []float64 `json:"samples_ms"`
	Min     float64   `json:"min_ms"`
	Median  float64   `json:"median_ms"`
	Max     float64   `json:"max_ms"`
}

func summarize(name string, ms []float64) series {
	s := series{Name: name, Samples: ms}
	if len(ms) == 0 {
		return s
	}
	sorted := append([]float64(nil), ms...)
	sort.Float64s(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return s
}

type results struct {
	Runs      int                `json:"runs"`
	Host      string             `json:"host"`
	Accel     string             `json:"accel"`
	StartedAt time.Time          `json:"started_at"`
	Series    []series           `json:"series"`
	Ratios    map[string]float64 `json:"ratios"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func TestBenchCreate(t *testing.T) {
	if os.Getenv("BANGER_BENCH") != "1" && os.Getenv(testutil.EnvNetNS) == "" {
		t.Skip("a measurement, not a test: run scripts/bench-create (BANGER_BENCH=1)")
	}
	testutil.RequireRoot(t)
	image := harness.EnsureImage(t)
	stock := harness.EnsureImageVariant(t, guest.VariantStock)
	if !testutil.InNetNS(t) {
		return
	}
	runs, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_RUNS"))
	if runs < 1 {
		runs = 3
	}
	out := os.Getenv("BANGER_BENCH_OUT")
	res := results{Runs: runs, StartedAt: time.Now().UTC(), Ratios: map[string]float64{}}
	res.Host, _ = os.Hostname()
	add := func(s series) { res.Series = append(res.Series, s) }

	// banger: create (pool on), ssh true, delete.
	e := harness.NewEnv(t)
	cfg := func(pool int) string {
		return fmt.Sprintf("[network]\nbridge = \"bangerb0\"\nsubnet = \"10.231.20.0/24\"\ntap_pool_size = %d\n[vm]\nvcpus = 2\nmemory_mib = 512\ndisk_size = \"1G\"\n", pool)
	}
	e.WriteConfig(cfg(1))
	t.Cleanup(e.KillHelper)
	e.MustBanger("image", "import", "--name", "default", image)
	e.MustBanger("network", "up")
	time.Sleep(500 * time.Millisecond) // let the pool fill
	// One run is a banger create, a bare boot of the same image and a
	// bare boot of the stock image, interleaved (in an order that rotates)
	// so that a noisy host weighs on all three alike.
	b := newBare(t)
	var total, sshReady, ssh, execTrue, cpIn, cpOut, scpIn, scpOut, stagesPool, bareLean, bareStock []float64
	big := filepath.Join(t.TempDir(), "big.bin")
	if err := exec.Command("dd", "if=/dev/urandom", "of="+big, "bs=1M", "count=256", "status=none").Run(); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	perStage := map[string][]float64{}
	var order []string
	bangerRun := func(i int) {
		name := fmt.Sprintf("b%d", i)
		start := time.Now()
		var info api.VMInfo
		e.JSON(&info, "vm", "create", "--name", name, "--cold")
		total = append(total, ms(time.Since(start)))
		for _, st := range info.Runtime.LastBoot {
			if _, ok := perStage[st.Name]; !ok {
				order = append(order, st.Name)
			}
			perStage[st.Name] = append(perStage[st.Name], float64(st.DurationMS))
			if st.Name == "network" && strings.Contains(st.Detail, "from the pool") {
				stagesPool = append(stagesPool, float64(st.DurationMS))
			}
		}
		// The same boot to SSH-ready: the create returned at the agent's
		// answer; sshd comes up beside.
		for e.Banger("vm", "ssh", name, "--", "true").Code != 0 {
			time.Sleep(50 * time.Millisecond)
		}
		sshReady = append(sshReady, ms(time.Since(start)))
		// A command, whole CLI process: over SSH, then through the agent.
		for k := 0; k < 3; k++ {
			s := time.Now()
			e.MustBanger("vm", "ssh", name, "--", "true")
			ssh = append(ssh, ms(time.Since(s)))
			s = time.Now()
			e.MustBanger("vm", "exec", name, "--", "true")
			execTrue = append(execTrue, ms(time.Since(s)))
		}
		// 256 MiB each way: vm cp against scp with the VM's ssh-config.
		cfgFile := filepath.Join(outDir, "ssh_config")
		if err := os.WriteFile(cfgFile, []byte(e.MustBanger("vm", "ssh-config", name).Stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		timed := func(into *[]float64, argv ...string) {
			s := time.Now()
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", argv, err, out)
			}
			*into = append(*into, ms(time.Since(s)))
		}
		cpCmd := func(into *[]float64, args ...string) {
			s := time.Now()
			e.MustBanger(append([]string{"vm", "cp"}, args...)...)
			*into = append(*into, ms(time.Since(s)))
		}
		cpCmd(&cpIn, big, name+":/root/a.bin")
		timed(&scpIn, "scp", "-q", "-F", cfgFile, big, name+":/root/b.bin")
		cpCmd(&cpOut, name+":/root/a.bin", filepath.Join(outDir, "a.bin"))
		timed(&scpOut, "scp", "-q", "-F", cfgFile, name+":/root/b.bin", filepath.Join(outDir, "b.bin"))
		os.Remove(filepath.Join(outDir, "a.bin"))
		os.Remove(filepath.Join(outDir, "b.bin"))
		e.MustBanger("vm", "delete", name)
		time.Sleep(300 * time.Millisecond) // the pool refills
	}
	steps := []func(int){
		bangerRun,
		func(int) { bareLean = append(bareLean, b.boot(t, image)) },
		func(int) { bareStock = append(bareStock, b.boot(t, stock)) },
	}
	for i := 0; i < runs; i++ {
		// Rotate the order, so none of the three always follows another.
		for k := range steps {
			steps[(i+k)%len(steps)](i)
		}
	}
	agentReady := summarize("cold create to agent-ready (CLI wall)", total)
	add(agentReady)
	for _, n := range order {
		add(summarize("  stage "+n, perStage[n]))
	}
	sshR := summarize("the same boots to ssh-ready", sshReady)
	add(sshR)
	sshTrue, execT := summarize("banger vm ssh -- true", ssh), summarize("banger vm exec -- true", execTrue)
	add(sshTrue)
	add(execT)
	cin, sin := summarize("vm cp 256 MiB into the VM", cpIn), summarize("scp 256 MiB into the VM (ssh-config)", scpIn)
	cout, sout := summarize("vm cp 256 MiB out of the VM", cpOut), summarize("scp 256 MiB out of the VM (ssh-config)", scpOut)
	add(cin)
	add(sin)
	add(cout)
	add(sout)
	if sshR.Median > 0 {
		res.Ratios["agent-ready/ssh-ready median (target <= 0.85)"] = agentReady.Median / sshR.Median
	}
	if sshTrue.Median > 0 {
		res.Ratios["exec true/ssh true median (target <= 0.1)"] = execT.Median / sshTrue.Median
	}
	if sin.Median > 0 && sout.Median > 0 {
		res.Ratios["vm cp/scp in, time median (target <= 1)"] = cin.Median / sin.Median
		res.Ratios["vm cp/scp out, time median (target <= 1)"] = cout.Median / sout.Median
	}

	// Snapshots: warm creates, forks, parallel creates, pause and resume,
	// Pss, many clones (BANGER_BENCH_CLONES, default 32, of 1 GiB).
	clones := 32
	if v := os.Getenv("BANGER_BENCH_CLONES"); v != "" {
		clones, _ = strconv.Atoi(v)
	}
	snapshotBench(t, e, runs, total, clones, 1024, add, res.Ratios)

	// A new TAP per create: no pool.
	e.MustBanger("network", "down")
	e.MustBanger("daemon", "stop")
	e.WriteConfig(cfg(0))
	var stagesNew []float64
	for i := 0; i < runs; i++ {
		name := fmt.Sprintf("n%d", i)
		var info api.VMInfo
		e.JSON(&info, "vm", "create", "--name", name, "--cold")
		for _, st := range info.Runtime.LastBoot {
			if st.Name == "network" {
				stagesNew = append(stagesNew, float64(st.DurationMS))
			}
		}
		e.MustBanger("vm", "delete", name)
	}
	add(summarize("network stage, TAP from the pool", stagesPool))
	add(summarize("network stage, new TAP", stagesNew))
	e.MustBanger("network", "down")
	e.MustBanger("daemon", "stop")
	e.KillHelper()

	// Baseline: the same image booted by qemu's bare command line; and
	// the stock Debian minbase image (systemd, sshd, udev, Debian's
	// initrd), same kernel, same qemu command line.
	base := summarize("bare qemu boot to ssh-ready (baseline)", bareLean)
	add(base)
	stockBase := summarize("bare qemu boot of the stock image", bareStock)
	add(stockBase)
	if stockBase.Median > 0 {
		res.Ratios["default/stock image boot median"] = base.Median / stockBase.Median
	}
	if base.Median > 0 {
		res.Ratios["banger ssh-ready/baseline ssh-ready median"] = sshR.Median / base.Median
	}

	// Work disk: seed clone + grow to 4 GiB against from scratch.
	seedMS, scratchMS := workDisks(t, image, runs)
	add(summarize("work disk 4G from the seed", seedMS))
	add(summarize("work disk 4G from scratch", scratchMS))
	if m := summarize("", scratchMS).Median; m > 0 {
		res.Ratios["work disk seed/scratch median"] = summarize("", seedMS).Median / m
	}

	// vm list over 200 VMs, whole CLI process.
	add(listBench(t, image))

	res.Accel = "tcg"
	fmt.Printf("\n%-46s %10s %10s %10s\n", "series (ms)", "min", "median", "max")
	for _, s := range res.Series {
		fmt.Printf("%-46s %10.1f %10.1f %10.1f\n", s.Name, s.Min, s.Median, s.Max)
	}
	keys := make([]string, 0, len(res.Ratios))
	for k := range res.Ratios {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%-46s %10.2f\n", k, res.Ratios[k])
	}
	if out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("results: %s\n", out)
	}
}

// bare boots images with qemu's own command line (the argv banger's
// driver builds, minus banger) on a qcow2 overlay, a seed-made work disk
// and a config disk, with a TAP on a bridge of its own, and times each to
// SSH-ready: the baseline.
type bare struct {
	dir, key string
	khz      uint32
	kernels  map[string]string
	n        int
}

func newBare(t *testing.T) *bare {
	b := &bare{dir: t.TempDir(), kernels: map[string]string{}}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "bbase0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	addr, _ := netlink.ParseAddr("10.231.21.1/24")
	netlink.AddrAdd(br, addr)
	netlink.LinkSetUp(br)
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tbase0", MasterIndex: br.Index}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(tap) })
	netlink.LinkSetMaster(tap, br)
	netlink.LinkSetUp(tap)
	b.key = filepath.Join(b.dir, "id_ed25519")
	if _, err := (&runner.Exec{}).Run(context.Background(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", b.key); err != nil {
		t.Fatal(err)
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	b.khz, _ = guest.ParseTSCKHz(nil, cpuinfo)
	return b
}

// kernel is the kernel banger's qemu driver would boot for image: its
// vmlinux through the PVH entry when it has one, else the bzImage.
func (b *bare) kernel(image string) string {
	if k, ok := b.kernels[image]; ok {
		return k
	}
	k := filepath.Join(b.dir, fmt.Sprintf("vmlinux-%d", len(b.kernels)))
	if err := bimage.ExtractVmlinux(filepath.Join(image, "vmlinuz"), k); err != nil || !bimage.HasPVHEntry(k) {
		k = filepath.Join(image, "vmlinuz")
	}
	b.kernels[image] = k
	return k
}

// boot boots image once and returns the milliseconds to SSH-ready.
func (b *bare) boot(t *testing.T, image string) float64 {
	b.n++
	run := filepath.Join(b.dir, strconv.Itoa(b.n))
	os.MkdirAll(run, 0o700)
	defer os.RemoveAll(run)
	r := &runner.Exec{}
	ctx := context.Background()
	root, _, err := disk.Overlay(ctx, r, disk.StrategyQcow2, filepath.Join(image, "rootfs.ext4"), run)
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(run, "work.ext4")
	if _, err := disk.WorkDisk(ctx, r, filepath.Join(image, "work-seed.ext4"), "", work, 1<<30, disk.Keys{AuthorizedKey: b.key + ".pub"}); err != nil {
		t.Fatal(err)
	}
	// The host key on a config disk, as banger passes it (without one
	// the guest would make its own, slowly).
	hostKey := filepath.Join(run, "ssh_host_ed25519_key")
	if _, err := r.Run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey); err != nil {
		t.Fatal(err)
	}
	configPath := filepath.Join(run, guest.ConfigDiskName)
	if err := disk.WriteConfigDisk(configPath, hostKey, nil); err != nil {
		t.Fatal(err)
	}
	cmdline, _ := guest.KernelCmdline(guest.Settings{IP: mustPrefix("10.231.21.2/24"), Gateway: mustAddr("10.231.21.1"), Hostname: "base", TSCKHz: b.khz})
	args, err := qemu.Args(vmm.Spec{
		Name: "base", VCPUs: 2, MemoryMiB: 512, Kernel: b.kernel(image), Initrd: filepath.Join(image, "initrd.img"),
		Cmdline: cmdline, Accel: "tcg", TapName: "tbase0", MAC: "02:00:00:00:00:99",
		Disks: []vmm.Disk{{ID: "rootfs", Path: root, Format: "qcow2"}, {ID: "work", Path: work, Format: "raw"},
			{ID: "config", Path: configPath, Format: "raw", ReadOnly: true}},
		APISocket: filepath.Join(run, "qmp.sock"), ConsolePath: filepath.Join(run, "console.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}()
	for {
		if c, err := net.DialTimeout("tcp", "10.231.21.2:22", 500*time.Millisecond); err == nil {
			c.Close()
			ssh := exec.Command("ssh", "-i", b.key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
				"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=2", "root@10.231.21.2", "true")
			if ssh.Run() == nil {
				return ms(time.Since(start))
			}
		}
		if time.Since(start) > 3*time.Minute {
			t.Fatal("baseline VM never became ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// workDisks times a 4 GiB work disk made the way a create makes it, with
// the VM's config disk (its host key) written beside it in both cases:
// from the seed (a clone of the image's grown seed, cached per size and
// warmed once here) and from scratch (the image's /root copied into a new
// file system, plus the authorized key).
func workDisks(t *testing.T, image string, runs int) (seed, scratch []float64) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k.pub")
	os.WriteFile(key, []byte("ssh-ed25519 AAAABENCH bench\n"), 0o644)
	keys := disk.Keys{AuthorizedKey: key}
	cache := filepath.Join(dir, "cache")
	os.Mkdir(cache, 0o700)
	r := &runner.Exec{}
	ctx := context.Background()
	seedFile, rootfs := filepath.Join(image, "work-seed.ext4"), filepath.Join(image, "rootfs.ext4")
	warm := filepath.Join(dir, "warm.ext4")
	if _, err := disk.WorkDiskCached(ctx, r, seedFile, rootfs, cache, warm, 4<<30, keys); err != nil {
		t.Fatal(err)
	}
	os.Remove(warm)
	// A host key pair to pass, as the daemon's (made before the stage).
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	os.WriteFile(hostKey, []byte("HOST KEY\n"), 0o600)
	os.WriteFile(hostKey+".pub", []byte("ssh-ed25519 HOST\n"), 0o644)
	configDisk := func(out string) error { return disk.WriteConfigDisk(out+".config.tar", hostKey, nil) }
	for i := 0; i < runs; i++ {
		for _, fromSeed := range []bool{true, false} {
			out := filepath.Join(dir, fmt.Sprintf("w%d-%v.ext4", i, fromSeed))
			start := time.Now()
			var err error
			if fromSeed {
				_, err = disk.WorkDiskCached(ctx, r, seedFile, rootfs, cache, out, 4<<30, keys)
			} else {
				_, err = disk.WorkDisk(ctx, r, "", rootfs, out, 4<<30, keys)
			}
			if err == nil {
				err = configDisk(out)
			}
			if err != nil {
				t.Fatal(err)
			}
			d := ms(time.Since(start))
			if fromSeed {
				seed = append(seed, d)
			} else {
				scratch = append(scratch, d)
			}
			os.Remove(out)
			os.Remove(out + ".config.tar")
		}
	}
	return seed, scratch
}

// listBench times `banger vm list` (the whole CLI process) with 200 VMs
// recorded (stopped VMs, inserted straight into a fresh store).
func listBench(t *testing.T, image string) series {
	e := harness.NewEnv(t)
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(e.StateDir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		vm := model.VM{ID: fmt.Sprintf("%016x", i+1), Name: fmt.Sprintf("vm%d", i), Image: "default", VMM: "qemu",
			Spec:    model.VMSpec{VCPUs: 1, MemoryMiB: 512, DiskSizeBytes: 1 << 30},
			Runtime: model.VMRuntime{State: model.StateStopped, GuestIP: fmt.Sprintf("10.99.%d.%d", i/200, i%200+2), VMDir: filepath.Join(e.StateDir, "vms", fmt.Sprintf("%016x", i+1))}}
		if err := st.CreateVM(ctx, &vm); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	e.MustBanger("daemon", "status") // start the daemon outside the timing
	var samples []float64
	for i := 0; i < 20; i++ {
		r := e.MustBanger("vm", "list")
		if strings.Count(r.Stdout, "\n") != 201 {
			t.Fatalf("vm list printed %d lines", strings.Count(r.Stdout, "\n"))
		}
		samples = append(samples, ms(r.Took))
	}
	return summarize("banger vm list, 200 VMs (CLI process)", samples)
}

func mustPrefix(s string) netip.Prefix { p, _ := netip.ParsePrefix(s); return p }
func mustAddr(s string) netip.Addr     { a, _ := netip.ParseAddr(s); return a }
