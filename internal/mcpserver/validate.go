package mcpserver

import (
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// The checks below refuse what the daemon would refuse anyway, or what
// would mean something else than the model meant (a relative path is
// relative to the server's directory, which the model does not know), so
// that the model learns of it before anything happens. Each refusal wraps
// rpc.ErrBadRequest.

var (
	// guestUser is a user name as the guest's passwd has them.
	guestUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	// envName is an environment variable's name.
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// badRequest wraps a refusal with its code and the model's next step.
func badRequest(hint, format string, args ...any) error {
	return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, format, args...), hint)
}

// validateVMName checks a VM name (or id prefix) as banger does.
func validateVMName(name string) error {
	if err := model.ValidateName("vm", name); err != nil {
		return badRequest("name an existing VM; vm_list lists them", "%v", err)
	}
	return nil
}

func validateCreate(in CreateInput) error {
	if err := model.ValidateName("vm", in.Name); err != nil {
		return badRequest("choose a name such as dev-1", "%v", err)
	}
	if in.Image != "" {
		if err := model.ValidateName("image", in.Image); err != nil {
			return badRequest("omit image to use the default one, or name an image the user has (banger image list)", "%v", err)
		}
	}
	if in.VCPUs < 0 {
		return badRequest("omit vcpus for the default", "vcpus %d: must be positive", in.VCPUs)
	}
	if in.MemoryMiB < 0 {
		return badRequest("omit memory_mib for the default", "memory_mib %d: must be positive", in.MemoryMiB)
	}
	if in.DiskSize != "" {
		if _, err := config.ParseSize(in.DiskSize); err != nil {
			return badRequest("write the size as e.g. 4G or 512M, or omit it for the default", "disk_size: %v", err)
		}
	}
	return nil
}

func validateExec(in execArgs) error {
	if err := validateVMName(in.Name); err != nil {
		return err
	}
	if len(in.Argv) == 0 || in.Argv[0] == "" {
		return badRequest(`give the program and its arguments, e.g. ["uname", "-a"], or ["sh", "-c", "..."] for a shell command line`, "argv: the command is empty")
	}
	for i, a := range in.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return badRequest("remove the NUL byte", "argv[%d]: contains a NUL byte", i)
		}
	}
	for _, e := range in.Env {
		name, _, ok := strings.Cut(e, "=")
		if !ok || !envName.MatchString(name) || strings.IndexByte(e, 0) >= 0 {
			return badRequest("write each variable as NAME=value, NAME of letters, digits and '_' not starting with a digit", "env %q: not NAME=value", e)
		}
	}
	if in.Dir != "" {
		if err := checkGuestPath("dir", in.Dir); err != nil {
			return err
		}
	}
	if in.User != "" && !guestUser.MatchString(in.User) {
		return badRequest("omit user to run as root, or give a guest user name such as banger", "user %q: not a user name (lowercase letters, digits, '_' and '-', at most 32)", in.User)
	}
	if max := int(MaxExecTimeout / time.Second); in.TimeoutSeconds < 0 || in.TimeoutSeconds > max {
		return badRequest("omit timeout_seconds for the default, or run a longer job in the background (e.g. with nohup) and poll it", "timeout_seconds %d: must be between 1 and %d, or omitted", in.TimeoutSeconds, max)
	}
	return nil
}

func validateCopyIn(in copyInArgs) error {
	if err := validateVMName(in.Name); err != nil {
		return err
	}
	if err := checkHostPath("host_path", in.HostPath); err != nil {
		return err
	}
	return checkGuestPath("guest_path", in.GuestPath)
}

func validateCopyOut(in copyOutArgs) error {
	if err := validateVMName(in.Name); err != nil {
		return err
	}
	if err := checkGuestPath("guest_path", in.GuestPath); err != nil {
		return err
	}
	return checkHostPath("host_path", in.HostPath)
}

// checkHostPath refuses a host path that is not absolute.
func checkHostPath(field, p string) error {
	if !filepath.IsAbs(p) || strings.IndexByte(p, 0) >= 0 {
		return badRequest("give an absolute host path, starting with /", "%s %q: not an absolute path", field, p)
	}
	return nil
}

// checkGuestPath refuses a guest path that is not absolute.
func checkGuestPath(field, p string) error {
	if !path.IsAbs(p) || strings.IndexByte(p, 0) >= 0 {
		return badRequest("give an absolute guest path, starting with / (root's home is /root)", "%s %q: not an absolute path", field, p)
	}
	return nil
}
