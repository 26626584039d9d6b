package snapshot

import (
	"os"
	"syscall"
)

// allocated is the space a file takes on disk (its blocks), or its size
// when the file system does not say.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
