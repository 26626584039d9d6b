package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/imagebuild"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// Files of an image directory.
const (
	fileRootfs    = "rootfs.ext4"
	fileWorkSeed  = "work-seed.ext4"
	fileVmlinuz   = "vmlinuz"
	fileVmlinux   = "vmlinux"
	fileInitrd    = "initrd.img"
	fileBuildLog  = "build.log"
	fileImageMeta = "image.json"
)

// imageBuilder is how the daemon builds images: imagebuild's functions.
// Unit tests swap in fakes (no mmdebstrap, no mirror).
var imageBuilder = struct {
	preflight func(imagebuild.Spec, imagebuild.Keyrings) (string, error)
	build     func(context.Context, imagebuild.Spec, imagebuild.Options) (imagebuild.Result, error)
	// agent finds and checks the banger-agent images carry.
	agent func() (string, error)
}{imagebuild.Preflight, imagebuild.Build, findCheckedAgent}

func findCheckedAgent() (string, error) {
	agent, err := findAgent()
	if err != nil {
		return "", err
	}
	return agent, imagebuild.CheckAgent(agent)
}

// maxImageBuilds bounds the builds one daemon runs at once: each is an
// mmdebstrap with half a GiB of tree and a mirror download.
const maxImageBuilds = 2

// Stages of an image build, in order.
var imageBuildStages = []string{"bootstrap", "configure", "pack", "kernel", "checksums", "register"}

func imageBuildHint(name string) string {
	return "build it: banger image build --name " + name
}

// imageBuildBegin validates the request, reserves the name and starts the
// build in the background. The returned operation's id is this call's op
// id; poll it with image.build.status.
func (d *Daemon) imageBuildBegin(ctx context.Context, p api.ImageBuildParams) (api.Operation, error) {
	o, err := d.startImageBuild(ctx, p)
	if err != nil {
		return api.Operation{}, err
	}
	return o.snapshot(), nil
}

// prepareImageBuild validates a build, reserves its name and clears its
// directory.
func (d *Daemon) prepareImageBuild(ctx context.Context, p api.ImageBuildParams) (*imageBuild, error) {
	if err := model.ValidateName("image", p.Name); err != nil {
		return nil, fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	if p.Suite == "" {
		p.Suite = d.cfg.Image.Suite
	}
	if !guest.ValidVariant(p.Variant) {
		return nil, rpc.Errorf(rpc.ErrBadRequest, "variant %q: want lean or stock", p.Variant)
	}
	if p.RootfsSize == 0 {
		p.RootfsSize = int64(d.cfg.Image.RootfsSize)
	}
	p.ExtraPackages = append(append([]string(nil), d.cfg.Image.ExtraPackages...), p.ExtraPackages...)
	security := ""
	if p.Mirror == "" {
		p.Mirror = d.cfg.Image.Mirror
	}
	if p.Mirror == "" {
		m, s, err := image.HostMirror(p.Suite)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
		}
		p.Mirror, security = m, s
	}

	spec := imagebuild.Spec{Suite: p.Suite, Mirror: p.Mirror, SecurityMirror: security, Packages: p.ExtraPackages,
		Variant: p.Variant, RootfsSize: p.RootfsSize}
	// Refused here, before an operation starts and anything is
	// downloaded: a bad spec, a suite without a pinned keyring, a host
	// that cannot build (tools, subordinate ids).
	if _, err := imageBuilder.preflight(spec, nil); err != nil {
		return nil, err
	}
	agent, err := imageBuilder.agent()
	if err != nil {
		return nil, err
	}

	d.imagesMu.Lock()
	defer d.imagesMu.Unlock()
	if other, busy := d.imageBuilds[p.Name]; busy {
		return nil, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "image %q is already being built by %s", p.Name, other),
			"follow it: banger daemon logs --follow --op "+other)
	}
	if n := len(d.imageBuilds); n >= maxImageBuilds {
		var ops []string
		for name, id := range d.imageBuilds {
			ops = append(ops, name+" ("+id+")")
		}
		slices.Sort(ops)
		return nil, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "%d image builds are running (%s), the most one daemon runs at once", n, strings.Join(ops, ", ")),
			"wait for one to finish (banger daemon logs --follow --op ID), then build again")
	}
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return nil, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "image %q already exists", p.Name),
			"delete it first (banger image delete "+p.Name+") or choose another --name")
	} else if !errors.Is(err, rpc.ErrNotFound) {
		return nil, err
	}

	b := &imageBuild{p: p, spec: spec, agent: agent, dir: d.layout.ImageDir(p.Name)}
	b.logPath = filepath.Join(b.dir, fileBuildLog)
	if err := d.clearImageDir(ctx, b.dir); err != nil {
		return nil, err
	}
	d.imageBuilds[p.Name] = op.From(ctx)
	return b, nil
}

// imageBuild is a build whose name is reserved and whose directory is
// ready.
type imageBuild struct {
	p            api.ImageBuildParams
	spec         imagebuild.Spec
	agent        string // the banger-agent the image carries
	dir, logPath string
}

// startImageBuild begins a build as an operation of its own, in the
// background.
func (d *Daemon) startImageBuild(ctx context.Context, p api.ImageBuildParams) (*operation, error) {
	b, err := d.prepareImageBuild(ctx, p)
	if err != nil {
		return nil, err
	}
	o := d.ops.start(ctx, "image.build", p.Name, imageBuildStages)
	o.st.LogPath = b.logPath
	o.progress = func() string { return lastLine(b.logPath) }
	bctx := context.WithoutCancel(ctx)
	go func() {
		img, err := d.runBuild(bctx, o, b, "")
		if err != nil {
			o.finish(nil, err)
			return
		}
		o.finish(img, nil)
	}()
	return o, nil
}

// runBuild runs a prepared build as stages of o (their names prefixed),
// then releases the name.
func (d *Daemon) runBuild(ctx context.Context, o *operation, b *imageBuild, stagePrefix string) (model.Image, error) {
	start := time.Now()
	img, err := d.runImageBuild(ctx, o, b, stagePrefix)
	d.imagesMu.Lock()
	delete(d.imageBuilds, b.p.Name)
	d.imagesMu.Unlock()
	if err != nil {
		// The build's own next step (install a keyring, get subordinate
		// ids) comes first; the log always.
		hint := "read the build log: " + b.logPath
		if h := rpc.HintOf(err); h != "" {
			hint = h + "; build log: " + b.logPath
		}
		err = rpc.WithHint(fmt.Errorf("building image %q: %w; build log: %s", b.p.Name, err, b.logPath), hint)
		d.log.ErrorContext(ctx, "image build failed", "image", b.p.Name, "error", err.Error(), "build_log", b.logPath)
		return img, err
	}
	d.log.InfoContext(ctx, "image built", "image", b.p.Name, "kernel", img.KernelVersion, "duration_ms", time.Since(start).Milliseconds())
	return img, nil
}

// clearImageDir prepares dir for a build: what an earlier failed build left
// (never a registered image: the caller checked) is removed.
func (d *Daemon) clearImageDir(ctx context.Context, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clearing %s: %w", dir, err)
	}
	return os.MkdirAll(dir, 0o700)
}

// runImageBuild builds b's image into its directory as this daemon's
// user (imagebuild: mmdebstrap in user namespaces, no helper), then
// extracts the vmlinux, hashes the disks and registers the image. The
// bootstrap, configure and pack stages are one mmdebstrap run: its hook
// says when configure and pack begin.
func (d *Daemon) runImageBuild(ctx context.Context, o *operation, b *imageBuild, stagePrefix string) (img model.Image, err error) {
	p, dir, logPath := b.p, b.dir, b.logPath
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return img, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==> banger image build %s (%s) suite=%s mirror=%s\n", p.Name, op.From(ctx), p.Suite, p.Mirror)
	defer func() {
		if err != nil {
			d.removeImageFiles(dir)
		}
	}()

	// A daemon that stops cancels its builds: mmdebstrap gets SIGTERM and
	// removes its chroot.
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.runCtx != nil {
		stop := context.AfterFunc(d.runCtx, cancel)
		defer stop()
	}
	t := newBuildTracker()
	go func() {
		r, err := imageBuilder.build(bctx, b.spec, imagebuild.Options{OutDir: dir, Log: logf, LogPath: logPath, OnStage: t.event, Agent: b.agent})
		t.finish(r, err)
	}()
	// Every return below stops Build (a no-op once it ended) and waits
	// for it: it owns logf and dir until then.
	defer func() {
		cancel()
		t.wait()
	}()

	pkgs := len(b.spec.AllPackages())
	if err := o.stage(ctx, d.log, stagePrefix+"bootstrap", func() (string, error) {
		_, err := t.until("configure")
		return fmt.Sprintf("mmdebstrap %s with %d packages", p.Suite, pkgs), err
	}); err != nil {
		return img, err
	}
	if err := o.stage(ctx, d.log, stagePrefix+"configure", func() (string, error) {
		e, err := t.until("pack")
		variant := p.Variant
		if variant == "" {
			variant = guest.VariantLean
		}
		return "kernel " + e.KernelVersion + ", " + variant + " variant", err
	}); err != nil {
		return img, err
	}
	var built imagebuild.Result
	if err := o.stage(ctx, d.log, stagePrefix+"pack", func() (string, error) {
		var err error
		built, err = t.wait()
		return fmt.Sprintf("rootfs %d MiB, work-seed %d MiB, %s initrd", built.RootfsSize>>20, built.WorkSeedSize>>20, built.Initrd), err
	}); err != nil {
		return img, err
	}
	img = model.Image{
		Name: p.Name, Dir: dir, Source: "built", Suite: p.Suite, KernelVersion: built.KernelVersion,
		RootfsPath: built.Rootfs, RootfsSize: built.RootfsSize,
		WorkSeedPath: built.WorkSeed, WorkSeedSize: built.WorkSeedSize,
		KernelPath: built.Kernel, InitrdPath: built.InitrdPath,
		VmlinuxPath: filepath.Join(dir, fileVmlinux), BuildLogPath: logPath,
	}
	if err := o.stage(ctx, d.log, stagePrefix+"kernel", func() (string, error) {
		fmt.Fprintf(logf, "==> extracting ELF vmlinux from %s\n", img.KernelPath)
		return "ELF vmlinux for firecracker", image.ExtractVmlinux(img.KernelPath, img.VmlinuxPath)
	}); err != nil {
		return img, err
	}
	if err := o.stage(ctx, d.log, stagePrefix+"checksums", func() (string, error) {
		var err error
		if img.RootfsSHA256, err = sha256File(img.RootfsPath); err != nil {
			return "", err
		}
		img.WorkSeedSHA, err = sha256File(img.WorkSeedPath)
		return "sha256 of rootfs and work-seed", err
	}); err != nil {
		return img, err
	}
	err = o.stage(ctx, d.log, stagePrefix+"register", func() (string, error) {
		return "", d.registerImage(ctx, &img)
	})
	return img, err
}

// buildTracker turns imagebuild's stage events and its end into the
// daemon's stages, which run one after the other.
type buildTracker struct {
	events chan imagebuild.Event
	done   chan struct{}
	res    imagebuild.Result
	err    error
}

func newBuildTracker() *buildTracker {
	// Two events at most: sending never blocks.
	return &buildTracker{events: make(chan imagebuild.Event, 4), done: make(chan struct{})}
}

func (t *buildTracker) event(e imagebuild.Event) { t.events <- e }

func (t *buildTracker) finish(r imagebuild.Result, err error) {
	t.res, t.err = r, err
	close(t.done)
}

// until waits for stage to begin; a build that ends first is its error.
func (t *buildTracker) until(stage string) (imagebuild.Event, error) {
	select {
	case e := <-t.events:
		return t.check(stage, e)
	case <-t.done:
	}
	select {
	case e := <-t.events:
		return t.check(stage, e)
	default:
	}
	if t.err != nil {
		return imagebuild.Event{}, t.err
	}
	return imagebuild.Event{}, fmt.Errorf("the build ended before its %s stage", stage)
}

func (t *buildTracker) check(stage string, e imagebuild.Event) (imagebuild.Event, error) {
	if e.Stage != stage {
		return e, fmt.Errorf("the build reported stage %s, want %s", e.Stage, stage)
	}
	return e, nil
}

// wait waits for the build's end.
func (t *buildTracker) wait() (imagebuild.Result, error) {
	<-t.done
	return t.res, t.err
}

// registerImage reads the image's guest contract from its rootfs, writes
// image.json (so a crash between here and the insert is recoverable) and
// inserts the row.
func (d *Daemon) registerImage(ctx context.Context, img *model.Image) error {
	c, err := image.GuestContract(ctx, &runner.Exec{}, img.RootfsPath)
	if err != nil {
		return err
	}
	img.GuestContract = c
	img.CreatedAt = time.Now().UTC()
	meta, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(img.Dir, fileImageMeta), meta, 0o600); err != nil {
		return err
	}
	return d.store.CreateImage(ctx, img)
}

// removeImageFiles deletes everything of a failed build but its log.
func (d *Daemon) removeImageFiles(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != fileBuildLog {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

func (d *Daemon) imageBuildStatus(ctx context.Context, p api.OperationStatusParams) (api.Operation, error) {
	return d.ops.status(ctx, p)
}

func (d *Daemon) imageInfo(ctx context.Context, img model.Image) (api.ImageInfo, error) {
	users, err := d.store.VMsUsingImage(ctx, img.Name)
	if err != nil {
		return api.ImageInfo{}, err
	}
	if users == nil {
		users = []string{}
	}
	return api.ImageInfo{Image: img, UsedBy: users}, nil
}

func (d *Daemon) imageList(ctx context.Context, _ noParams) ([]api.ImageInfo, error) {
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.ImageInfo, 0, len(imgs))
	for _, img := range imgs {
		info, err := d.imageInfo(ctx, img)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

func (d *Daemon) getImage(ctx context.Context, name string) (model.Image, error) {
	img, err := d.store.GetImage(ctx, name)
	if errors.Is(err, rpc.ErrNotFound) {
		return img, rpc.WithHint(err, imageBuildHint(name)+" (or see: banger image list)")
	}
	return img, err
}

func (d *Daemon) imageShow(ctx context.Context, p api.ImageRef) (api.ImageInfo, error) {
	img, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.ImageInfo{}, err
	}
	return d.imageInfo(ctx, img)
}

func (d *Daemon) imageDelete(ctx context.Context, p api.ImageRef) (api.ImageInfo, error) {
	img, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.ImageInfo{}, err
	}
	// Snapshots sit on the image's files: its templates go with it, a
	// snapshot of a VM stops it.
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return api.ImageInfo{}, err
	}
	var templates []model.Snapshot
	for _, sn := range sns {
		if sn.Image != img.Name {
			continue
		}
		if sn.Kind == model.SnapshotTemplate {
			templates = append(templates, sn)
			continue
		}
		return api.ImageInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "image %s has snapshot %s (of vm %s), which sits on its files", img.Name, sn.Name, sn.VMName),
			"delete it first: banger snapshot delete "+sn.Name)
	}
	if err := d.store.DeleteImage(ctx, p.Name); err != nil {
		if errors.Is(err, rpc.ErrConflict) {
			return api.ImageInfo{}, rpc.WithHint(err, "delete those VMs first: banger vm delete NAME")
		}
		return api.ImageInfo{}, err
	}
	for _, sn := range templates {
		if err := d.deleteSnapshot(ctx, sn); err != nil {
			d.log.WarnContext(ctx, "deleting an image's warm template", "image", img.Name, "snapshot", sn.Name, "error", err.Error())
		}
	}
	if err := os.RemoveAll(img.Dir); err != nil {
		d.log.WarnContext(ctx, "removing image directory", "image", img.Name, "dir", img.Dir, "error", err.Error())
	}
	d.log.InfoContext(ctx, "image deleted", "image", img.Name)
	return api.ImageInfo{Image: img, UsedBy: []string{}}, nil
}

// imageRebuildSeed makes (or remakes) the work-seed of an image from its
// rootfs's /root, unprivileged.
func (d *Daemon) imageRebuildSeed(ctx context.Context, p api.ImageRef) (api.ImageInfo, error) {
	img, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.ImageInfo{}, err
	}
	if err := d.makeWorkSeed(ctx, &img); err != nil {
		return api.ImageInfo{}, err
	}
	if err := d.store.UpdateImage(ctx, &img); err != nil {
		return api.ImageInfo{}, err
	}
	d.log.InfoContext(ctx, "work-seed rebuilt", "image", img.Name, "work_seed", img.WorkSeedPath)
	return d.imageInfo(ctx, img)
}

func (d *Daemon) makeWorkSeed(ctx context.Context, img *model.Image) error {
	scratch, err := os.MkdirTemp(img.Dir, ".seed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	logf, err := os.OpenFile(filepath.Join(img.Dir, fileBuildLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==> work-seed for %s (%s)\n", img.Name, op.From(ctx))
	tmp := filepath.Join(img.Dir, fileWorkSeed+".new")
	os.Remove(tmp)
	if err := image.MakeWorkSeed(ctx, &runner.Exec{Log: logf}, img.RootfsPath, tmp, scratch); err != nil {
		os.Remove(tmp)
		return rpc.WithHint(fmt.Errorf("making the work-seed of %s: %w", img.Name, err), "see "+filepath.Join(img.Dir, fileBuildLog))
	}
	final := filepath.Join(img.Dir, fileWorkSeed)
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	// Grown copies of the old seed are stale now.
	stale, _ := filepath.Glob(filepath.Join(img.Dir, disk.GrownSeedPattern))
	for _, p := range stale {
		os.Remove(p)
	}
	st, err := os.Stat(final)
	if err != nil {
		return err
	}
	sum, err := sha256File(final)
	if err != nil {
		return err
	}
	img.WorkSeedPath, img.WorkSeedSize, img.WorkSeedSHA = final, st.Size(), sum
	return nil
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lastLine returns the last non-empty line of a log, for progress notes.
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	const tail = 4096
	off := max(st.Size()-tail, 0)
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	if len(last) > 160 {
		last = last[:160] + "..."
	}
	return last
}
