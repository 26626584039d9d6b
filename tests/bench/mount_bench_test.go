package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestBenchMounts measures a host folder (virtio-fs) against the work disk
// in one VM, for each virtiofsd setting tried: 2,000 file creates plus
// ls -l (a stat of each), and a sequential read of a 256 MiB file with the
// guest's page cache dropped first. Timed inside the guest (date +%s%N),
// so vm exec's own cost is not in the figures. Run: make bench-mounts.
func TestBenchMounts(t *testing.T) {
	if os.Getenv("BANGER_BENCH") != "1" && os.Getenv(testutil.EnvNetNS) == "" {
		t.Skip("a measurement, not a test: make bench-mounts (BANGER_BENCH=1)")
	}
	testutil.RequireRoot(t)
	image := harness.EnsureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	runs, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_RUNS"))
	if runs < 1 {
		runs = 3
	}
	e := harness.NewEnv(t)
	t.Cleanup(e.KillHelper)
	share := t.TempDir()
	os.Chmod(share, 0o755)
	if err := exec.Command("dd", "if=/dev/urandom", "of="+filepath.Join(share, "big"), "bs=1M", "count=256", "status=none").Run(); err != nil {
		t.Fatal(err)
	}
	guestMS := func(vm, script string) float64 {
		r := e.MustBanger("vm", "exec", vm, "--", "sh", "-c", "s=$(date +%s%N); "+script+"; e=$(date +%s%N); echo $(( (e - s) / 1000 ))")
		us, err := strconv.ParseFloat(strings.TrimSpace(r.Stdout[strings.LastIndexByte(strings.TrimSpace(r.Stdout), '\n')+1:]), 64)
		if err != nil {
			t.Fatalf("%s: %q", script, r.Stdout)
		}
		return us / 1000
	}
	creates := func(dir string) string {
		return "mkdir -p " + dir + "/c && cd " + dir + "/c && i=0; while [ $i -lt 2000 ]; do : > f$i; i=$((i+1)); done; ls -l > /dev/null"
	}
	read := func(file string) string {
		return "sync; echo 3 > /proc/sys/vm/drop_caches; dd if=" + file + " of=/dev/null bs=1M status=none"
	}
	for i, v := range []struct {
		name, cache string
		threads     int
	}{
		{"cache=auto (default)", "auto", 0},
		{"cache=always", "always", 0},
		{"cache=always, 4 threads", "always", 4},
	} {
		e.WriteConfig(fmt.Sprintf("[network]\nbridge = \"bangerm0\"\nsubnet = \"10.231.21.0/24\"\ntap_pool_size = 0\n[vm]\nvcpus = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\nwarm = false\nmount_cache = %q\nmount_threads = %d\n", v.cache, v.threads))
		if i == 0 {
			e.MustBanger("image", "import", "--name", "default", image)
		} else {
			e.MustBanger("daemon", "stop")
		}
		vm := fmt.Sprintf("m%d", i)
		e.MustBanger("vm", "create", "--name", vm, "--mount", share+":/mnt/share")
		e.MustBanger("vm", "exec", vm, "--", "cp", "/mnt/share/big", "/root/big")
		var mc, wc, mr, wr []float64
		for r := 0; r < runs; r++ {
			e.MustBanger("vm", "exec", vm, "--", "rm", "-rf", "/mnt/share/c", "/root/c")
			mc = append(mc, guestMS(vm, creates("/mnt/share")))
			wc = append(wc, guestMS(vm, creates("/root")))
			mr = append(mr, guestMS(vm, read("/mnt/share/big")))
			wr = append(wr, guestMS(vm, read("/root/big")))
		}
		m, w := summarize("", mc), summarize("", wc)
		rm, rw := summarize("", mr), summarize("", wr)
		t.Logf("%-26s 2000 creates+stat: mount %7.0f ms, work disk %7.0f ms, ratio %.2fx (target <= 3x)", v.name, m.Median, w.Median, m.Median/w.Median)
		t.Logf("%-26s 256 MiB read:      mount %7.0f ms (%4.0f MiB/s), work disk %7.0f ms (%4.0f MiB/s), mount/disk speed %.2f (target >= 0.5)",
			v.name, rm.Median, 256/(rm.Median/1000), rw.Median, 256/(rw.Median/1000), rw.Median/rm.Median)
		e.MustBanger("vm", "delete", "--force", vm)
	}
}
