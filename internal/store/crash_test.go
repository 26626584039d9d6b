package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// writerEnv switches TestHelperWriter on and names its database;
// writerBaseEnv is the first VM number it writes.
const (
	writerEnv     = "BANGER_STORE_TEST_WRITER_DB"
	writerBaseEnv = "BANGER_STORE_TEST_WRITER_BASE"
)

// TestHelperWriter is not a test: TestCrashSafety runs the test binary
// again with only this function, as a child process that writes VMs as
// fast as it can and prints "committed <id>" after each commit returns.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv(writerEnv)
	if path == "" {
		t.Skip("helper process for TestCrashSafety")
	}
	base, _ := strconv.Atoi(os.Getenv(writerBaseEnv))
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	deadline := time.Now().Add(time.Minute) // in case nobody kills us
	var wg sync.WaitGroup
	const writers = 4
	for w := range writers {
		wg.Go(func() {
			for i := base + w; time.Now().Before(deadline); i += writers {
				vm := fullVM(i)
				if err := s.CreateVM(ctx, &vm); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Printf("committed %s\n", vm.ID)
				mu.Unlock()
				// More write traffic: a read-modify-write on the new row.
				if _, err := s.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
					r.State = model.StateStopped
					return nil
				}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
			}
		})
	}
	wg.Wait()
	os.Exit(3) // never killed: the parent will say so
}

// TestCrashSafety kills a writing process with SIGKILL, three times over
// the same file (so each child first recovers what the last one left), and
// checks that the database is intact and holds every row whose commit had
// returned.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	var committed []string
	for round := range 3 {
		ids := killWriter(t, path, round*1_000_000)
		t.Logf("round %d: child reported %d commits before SIGKILL", round, len(ids))
		committed = append(committed, ids...)
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Logf("no WAL file left behind: %v", err)
	}

	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var check string
	if err := s.db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q, %v", check, err)
	}
	for _, id := range committed {
		if _, err := s.GetVM(context.Background(), id); err != nil {
			t.Errorf("committed vm lost: %v", err)
		}
	}
	vms, _ := s.ListVMs(context.Background())
	t.Logf("children reported %d commits; database holds %d vms", len(committed), len(vms))
}

// killWriter runs TestHelperWriter on path, SIGKILLs it once it has
// reported 50 commits, and returns every id it reported.
func killWriter(t *testing.T, path string, base int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), writerEnv+"="+path, writerBaseEnv+"="+strconv.Itoa(base))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	watchdog := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer watchdog.Stop()

	const want = 50
	var committed []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		id, ok := strings.CutPrefix(sc.Text(), "committed ")
		if !ok {
			continue
		}
		committed = append(committed, id)
		if len(committed) == want {
			// SIGKILL: no deferred code, no Close, no checkpoint; the
			// child is somewhere in its next write.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Lines still in the pipe were printed after their commits, too.
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v\nstderr: %s", err, stderr.String())
	}
	if len(committed) < want {
		t.Fatalf("child reported %d commits, want %d\nstderr: %s", len(committed), want, stderr.String())
	}
	return committed
}
