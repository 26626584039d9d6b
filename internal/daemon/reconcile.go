package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// reconcileImages makes the images table and the images directory agree
// after a crash: a finished build whose row was never written is
// registered from its image.json; what an interrupted build left is
// removed (its build.log is kept); a default image whose files are gone
// loses its row, so the next VM create rebuilds it.
func (d *Daemon) reconcileImages(ctx context.Context) {
	rows, err := d.store.ListImages(ctx)
	if err != nil {
		d.log.ErrorContext(ctx, "reconcile images: listing", "error", err.Error())
		return
	}
	known := map[string]model.Image{}
	for _, img := range rows {
		known[img.Name] = img
	}
	entries, _ := os.ReadDir(d.layout.ImagesDir())
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		if _, ok := known[name]; ok {
			continue
		}
		dir := filepath.Join(d.layout.ImagesDir(), name)
		if img, ok := readImageMeta(dir); ok && img.Name == name && filesPresent(img) {
			if err := d.store.CreateImage(ctx, &img); err == nil {
				d.log.InfoContext(ctx, "reconcile: registered a finished image", "image", name)
				continue
			}
		}
		d.removeImageFiles(dir)
		d.log.InfoContext(ctx, "reconcile: removed an unfinished image build", "image", name, "build_log", filepath.Join(dir, fileBuildLog))
	}
	if img, ok := known[d.cfg.DefaultImage]; ok && !filesPresent(img) {
		if err := d.store.DeleteImage(ctx, img.Name); err != nil {
			if errors.Is(err, rpc.ErrConflict) {
				d.log.WarnContext(ctx, "reconcile: default image is missing files but VMs use it", "image", img.Name, "error", err.Error())
			}
			return
		}
		d.log.WarnContext(ctx, "reconcile: default image was incomplete on disk; its record is removed and it will be rebuilt on demand", "image", img.Name, "dir", img.Dir)
	}
}

func readImageMeta(dir string) (model.Image, bool) {
	var img model.Image
	data, err := os.ReadFile(filepath.Join(dir, fileImageMeta))
	if err != nil || json.Unmarshal(data, &img) != nil {
		return img, false
	}
	return img, true
}

// filesPresent reports whether an image's files are all on disk.
func filesPresent(img model.Image) bool {
	for _, p := range []string{img.RootfsPath, img.KernelPath, img.InitrdPath, img.WorkSeedPath} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return img.RootfsPath != "" && img.KernelPath != ""
}
