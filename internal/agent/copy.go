package agent

import (
	"context"
	"errors"
	"io"
	"path"
	"path/filepath"
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
// setgid bits are dropped; other modes, mtimes and symlinks are kept.
// start, when set, is called once the agent said what it sends (a
// directory or not, the size to expect, about): its error ends the copy
// with nothing written, and the function it returns, when not nil, is
// called with the tar bytes received so far. The result counts the files
// and bytes written. Nothing is left in dir on failure.
func CopyFrom(ctx context.Context, rw io.ReadWriter, guestPath, dir, name string, start func(GetResult) (progress func(received int64), err error)) (PutResult, error) {
	pr, pw := io.Pipe()
	type extraction struct {
		res PutResult
		err error
	}
	extracted := make(chan extraction, 1)
	begun := false
	err := Get(ctx, rw, guestPath, func(r GetResult) (io.Writer, error) {
		var progress func(int64)
		if start != nil {
			var err error
			if progress, err = start(r); err != nil {
				return nil, err
			}
		}
		begun = true
		go func() {
			files, n, err := extractTar(pr, dir, path.Base(path.Clean(guestPath)), name, false)
			if err != nil {
				pr.CloseWithError(err)
			} else {
				pr.CloseWithError(errCopyEnded)
			}
			extracted <- extraction{PutResult{Files: files, Bytes: n}, err}
		}()
		if progress != nil {
			return &counter{w: pw, f: progress}, nil
		}
		return pw, nil
	})
	pw.CloseWithError(err) // nil: EOF, and ExtractTar commits
	if !begun {
		return PutResult{}, err
	}
	x := <-extracted
	// Writing here failed first (Get then failed writing into the pipe
	// with that error), or after all arrived: the host's side.
	if x.err != nil && (err == nil || errors.Is(err, x.err)) {
		return x.res, &LocalError{Path: filepath.Join(dir, name), Err: x.err}
	}
	if err != nil {
		return x.res, err
	}
	return x.res, nil
}

// LocalError is CopyFrom failing on the host: what the agent sent could
// not be written (or was refused: an escape, a sparse entry) at Path.
type LocalError struct {
	Path string
	Err  error
}

func (e *LocalError) Error() string { return "writing " + e.Path + ": " + e.Err.Error() }
func (e *LocalError) Unwrap() error { return e.Err }

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
