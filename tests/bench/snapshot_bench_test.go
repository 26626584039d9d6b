package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/tests/harness"
)

// snapshotBench measures, in one run, against the cold creates the caller
// timed (coldMS, to agent-ready, whole CLI process): a warm create from the
// image's template, a fork of a running VM, 10 warm creates started at
// once, vm pause and vm resume, and the Pss of an idle clone against an idle
// cold-booted VM; then (clones > 0) that many clones of a template of
// cloneMiB running at once, each answering exec, with their total Pss.
func snapshotBench(t *testing.T, e *harness.Env, runs int, coldMS []float64, clones, cloneMiB int, add func(series), ratios map[string]float64) {
	wall := func(args ...string) float64 {
		s := time.Now()
		e.MustBanger(args...)
		return ms(time.Since(s))
	}
	// The template of the config's size: made once, not timed.
	e.MustBanger("image", "warm", "default")
	var warm, fork, pause, resume []float64 // fork: of w0, a warm clone
	for i := 0; i < runs; i++ {
		n := fmt.Sprintf("w%d", i)
		warm = append(warm, wall("vm", "create", "--name", n))
		var info api.VMInfo
		e.JSON(&info, "vm", "show", n)
		if d := harness.StageDetail(info, "allocate"); !strings.Contains(d, "warm") {
			t.Fatalf("create %s was not warm: %v", n, info.Runtime.LastBoot)
		}
	}
	// Forks of a running VM (w0), each deleted before the next.
	for i := 0; i < runs; i++ {
		n := fmt.Sprintf("f%d", i)
		fork = append(fork, wall("vm", "fork", "w0", "--name", n))
		e.MustBanger("vm", "delete", n)
	}
	for i := 0; i < 5*runs; i++ {
		pause = append(pause, wall("vm", "pause", "w0"))
		resume = append(resume, wall("vm", "resume", "w0"))
	}
	// Pss after 20 s idle: a cold-booted VM, a warm clone (w1 or w0).
	e.MustBanger("vm", "create", "--name", "coldpss", "--cold")
	time.Sleep(20 * time.Second)
	clone := "w0"
	if runs > 1 {
		clone = "w1"
	}
	coldPss, clonePss := vmPss(t, e, "coldpss"), vmPss(t, e, clone)
	// Forks of the cold-booted VM: its RAM is a memfd, copied beside a
	// device-state-only stream (a clone's RAM, a private mapping, goes
	// through the stream).
	var forkCold []float64
	for i := 0; i < runs; i++ {
		n := fmt.Sprintf("fc%d", i)
		forkCold = append(forkCold, wall("vm", "fork", "coldpss", "--name", n))
		e.MustBanger("vm", "delete", n)
	}
	e.MustBanger("vm", "delete", "coldpss")
	for i := 0; i < runs; i++ {
		e.MustBanger("vm", "delete", fmt.Sprintf("w%d", i))
	}

	// 10 warm creates at once: each CLI's wall time, the slowest against
	// one warm create's median.
	par := make([]float64, 10)
	var wg sync.WaitGroup
	for i := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			par[i] = wall("vm", "create", "--name", fmt.Sprintf("p%d", i))
		}()
	}
	wg.Wait()
	for i := range par {
		e.MustBanger("vm", "delete", fmt.Sprintf("p%d", i))
	}

	cold, w, f := summarize("", coldMS), summarize("warm create to agent-ready (CLI wall)", warm), summarize("fork of a running VM to agent-ready (CLI wall)", fork)
	fc := summarize("fork of a cold-booted VM to agent-ready (CLI wall)", forkCold)
	add(w)
	add(f)
	add(fc)
	p := summarize("10 warm creates at once, each (CLI wall)", par)
	add(p)
	pa, re := summarize("vm pause (CLI wall)", pause), summarize("vm resume (CLI wall)", resume)
	add(pa)
	add(re)
	if cold.Median > 0 {
		ratios["warm/cold create median (target <= 0.1)"] = w.Median / cold.Median
		ratios["fork/cold create median (target <= 0.15)"] = f.Median / cold.Median
		ratios["fork of a cold-booted VM/cold create median"] = fc.Median / cold.Median
	}
	if w.Median > 0 {
		ratios["10 at once slowest/one warm median (target <= 3)"] = p.Max / w.Median
	}
	fmt.Printf("Pss after 20 s idle: cold-booted VM %.1f MiB, warm clone %.1f MiB\n", coldPss, clonePss)
	if coldPss > 0 {
		ratios["idle clone/cold VM Pss (target <= 0.4)"] = clonePss / coldPss
	}

	if clones <= 0 {
		return
	}
	// clones clones of a cloneMiB template at once, 4 creates at a time.
	e.MustBanger("image", "warm", "default", "--memory", strconv.Itoa(cloneMiB))
	start := time.Now()
	sem := make(chan struct{}, 4)
	errs := make([]string, clones)
	for i := 0; i < clones; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if r := e.Banger("vm", "create", "--name", fmt.Sprintf("c%d", i), "--memory", strconv.Itoa(cloneMiB)); r.Code != 0 {
				errs[i] = r.String()
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != "" {
			t.Fatalf("clone c%d: %s", i, err)
		}
	}
	made := time.Since(start)
	answered := 0
	var total float64
	for i := 0; i < clones; i++ {
		n := fmt.Sprintf("c%d", i)
		if e.Banger("vm", "exec", n, "--", "true").Code == 0 {
			answered++
		}
		total += vmPss(t, e, n)
	}
	fmt.Printf("%d clones of a %d MiB template: made in %.1f s (4 at a time), %d answering exec, total Pss %.0f MiB (%.1f MiB each)\n",
		clones, cloneMiB, made.Seconds(), answered, total, total/float64(clones))
	ratios[fmt.Sprintf("%d clones of %d MiB answering exec", clones, cloneMiB)] = float64(answered)
	ratios[fmt.Sprintf("%d clones of %d MiB total Pss (GiB)", clones, cloneMiB)] = total / 1024
	for i := 0; i < clones; i++ {
		e.MustBanger("vm", "delete", fmt.Sprintf("c%d", i))
	}
}

// vmPss is the Pss of a VM's VMM process in MiB (smaps_rollup).
func vmPss(t *testing.T, e *harness.Env, name string) float64 {
	var info api.VMInfo
	e.JSON(&info, "vm", "show", name)
	if info.Handles == nil || info.Handles.PID == 0 {
		t.Fatalf("vm %s has no pid", name)
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(info.Handles.PID), "smaps_rollup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	t.Fatalf("no Pss for vm %s", name)
	return 0
}
