package agent

import (
	"context"
	"errors"
	"io"
	"path"
)

// errCopyEnded stops the other half of a copy once it is over.
var errCopyEnded = errors.New("the copy ended")

// CopyTo copies the local file or tree at src (a symlink at the top
// followed) into the guest directory dir as name: Put of WriteTar's tar.
// progress, when set, is called with the tar bytes sent so far (TreeSize
// gives the total to expect, about). Nothing is left in the guest on
// failure.
func CopyTo(ctx context.Context, rw io.ReadWriter, src, dir, name string, progress func(sent int64)) (PutResult, error) {
	if _, _, err := resolveTop(src); err != nil {
		return PutResult{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteTar(pw, src, name)) }()
	defer pr.CloseWithError(errCopyEnded)
	var r io.Reader = pr
	if progress != nil {
		r = &counter{r: pr, f: progress}
	}
	return Put(ctx, rw, dir, name, r)
}

// CopyFrom copies guestPath into the local directory dir as name:
// Get into ExtractTar, committed only once the agent confirmed the whole
// tar. The guest is not trusted with the host's users: the files are the
// caller's (even as root, no guest uid or gid is kept) and setuid and
// setgid bits are dropped; other modes, mtimes and symlinks are kept. progress, when set, is called with the tar bytes received so far
// (the GetResult's Size is the total, about). Nothing is left in dir on
// failure.
func CopyFrom(ctx context.Context, rw io.ReadWriter, guestPath, dir, name string, progress func(received int64)) (GetResult, error) {
	pr, pw := io.Pipe()
	extracted := make(chan error, 1)
	go func() {
		_, _, err := extractTar(pr, dir, path.Base(path.Clean(guestPath)), name, false)
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(errCopyEnded)
		}
		extracted <- err
	}()
	var res GetResult
	err := Get(ctx, rw, guestPath, func(r GetResult) (io.Writer, error) {
		res = r
		if progress != nil {
			return &counter{w: pw, f: progress}, nil
		}
		return pw, nil
	})
	pw.CloseWithError(err) // nil: EOF, and ExtractTar commits
	xerr := <-extracted
	if err != nil {
		return res, err
	}
	return res, xerr
}

// counter reports the bytes that went through it.
type counter struct {
	r io.Reader
	w io.Writer
	n int64
	f func(int64)
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		c.f(c.n)
	}
	return n, err
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if n > 0 {
		c.n += int64(n)
		c.f(c.n)
	}
	return n, err
}
