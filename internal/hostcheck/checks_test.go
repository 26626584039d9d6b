package hostcheck

import (
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"
)

func TestKernelConfigHas(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.gz")
	f, _ := os.Create(p)
	zw := gzip.NewWriter(f)
	zw.Write([]byte("# comment\nCONFIG_NF_TABLES=y\nCONFIG_NF_TABLES_INET=m\n"))
	zw.Close()
	f.Close()
	if !kernelConfigHas(p, "CONFIG_NF_TABLES=y") {
		t.Fatal("missed a line that is there")
	}
	if kernelConfigHas(p, "CONFIG_NF_TABLES_INET=y") || kernelConfigHas(filepath.Join(t.TempDir(), "none.gz"), "CONFIG_NF_TABLES=y") {
		t.Fatal("found a line that is not there")
	}
}
