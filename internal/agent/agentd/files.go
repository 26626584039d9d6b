package agentd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
)

func (s *Server) stat(st net.Conn, p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return answer(st, agent.StatResult{}, nil)
	case err != nil:
		return answer(st, nil, err)
	}
	perm := uint32(fi.Mode().Perm())
	for bit, m := range map[uint32]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
		if fi.Mode()&m != 0 {
			perm |= bit
		}
	}
	return answer(st, agent.StatResult{Exists: true, Dir: fi.IsDir(), Mode: perm, Size: fi.Size()}, nil)
}

// put extracts the stream's tar into req.Dir. A refusal is answered at
// once; the rest of the tar is then read and dropped, so that the host's
// writes never block on a stream nobody reads.
func (s *Server) put(st net.Conn, req agent.Request) ([]any, error) {
	fr := agent.FrameReader(st, agent.KindTar)
	files, n, err := agent.ExtractTar(fr, req.Dir, req.Name)
	attrs := []any{"files", files, "bytes", n}
	if err != nil {
		answer(st, nil, err)
		io.Copy(io.Discard, fr)
		return attrs, err
	}
	return attrs, answer(st, agent.PutResult{Files: files, Bytes: n}, nil)
}

// get sends path as a tar: the first answer, the tar's frames, its end,
// then a last answer that says whether all of it was sent.
func (s *Server) get(st net.Conn, p string) ([]any, error) {
	dir, size, err := agent.TreeSize(p)
	if errors.Is(err, syscall.ENOTDIR) {
		err = rpc.Errorf(rpc.ErrNotFound, "%s: %v", p, err)
	}
	if err != nil {
		return nil, answer(st, nil, err)
	}
	if err := answer(st, agent.GetResult{Dir: dir, Size: size}, nil); err != nil {
		return nil, err
	}
	fw := agent.FrameWriter(st, agent.KindTar)
	bw := bufio.NewWriterSize(fw, 256<<10)
	err = agent.WriteTar(bw, p, filepath.Base(filepath.Clean(p)))
	if err == nil {
		err = bw.Flush()
	}
	if cerr := fw.Close(); err == nil {
		err = cerr
	}
	return []any{"bytes", size}, answer(st, nil, err)
}

// connect dials 127.0.0.1:port in the guest, answers, then copies bytes
// both ways, passing each direction's end on as a half-close.
func (s *Server) connect(st net.Conn, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			err = rpc.Errorf(rpc.ErrNotFound, "nothing listens on %s in the guest", addr)
		} else {
			err = fmt.Errorf("connecting to %s in the guest: %w", addr, err)
		}
		return answer(st, nil, err)
	}
	tcp := c.(*net.TCPConn)
	defer tcp.Close()
	if err := answer(st, nil, nil); err != nil {
		return err
	}
	up := make(chan struct{})
	go func() {
		defer close(up)
		if _, err := io.Copy(tcp, st); err != nil {
			// The guest side stopped reading: drop what the host still
			// sends until it closes.
			io.Copy(io.Discard, st)
		}
		tcp.CloseWrite()
	}()
	io.Copy(st, tcp)
	st.Close() // half-close: the host reads EOF
	<-up
	return nil
}
