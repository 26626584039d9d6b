package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/op"
)

// cliRun is one in-process run of the real root command.
type cliRun struct {
	code           int
	stdout, stderr string
	opID           string
	ran            []string // the leaf commands whose RunE was reached
}

// isolateCLI points every path the CLI could touch at a fresh directory,
// and BANGERD at a script that leaves a marker, which it returns.
func isolateCLI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	marker := filepath.Join(dir, "daemon-started")
	script := filepath.Join(dir, "bangerd")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGERD", script)
	t.Setenv("BANGER_STATE_DIR", filepath.Join(dir, "state"))
	t.Setenv("BANGER_RUNTIME_DIR", filepath.Join(dir, "run"))
	t.Setenv("BANGER_CONFIG", filepath.Join(dir, "config.toml"))
	t.Setenv("BANGER_HELPER_SOCKET", filepath.Join(dir, "helper.sock"))
	return marker
}

// runTrapped runs the real root command with args, every leaf's RunE (but
// help's) replaced by a trap that records that it was reached: a usage
// error must come before any command does its work.
func runTrapped(args ...string) cliRun {
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, opID: op.New()}
	root := a.rootCommand()
	var ran []string
	trap := func(cmd *cobra.Command, _ []string) error {
		ran = append(ran, cmd.CommandPath())
		return nil
	}
	walkCommands(root, func(c *cobra.Command) {
		if !c.HasSubCommands() && c.Name() != "help" {
			c.Run, c.RunE, c.PreRun, c.PreRunE = nil, trap, nil, nil
		}
	})
	code := a.execute(root, args)
	return cliRun{code: code, stdout: out.String(), stderr: errb.String(), opID: a.opID, ran: ran}
}

func walkCommands(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walkCommands(sub, fn)
	}
}

// variadic lists the leaf commands that take any number of arguments
// without "--", so that stray arguments are theirs. A command added here
// needs a reason.
var variadic = map[string]string{
	"banger vm port-forward": "NAME and any number of HOSTPORT:GUESTPORT, each checked in its Args",
}

// Every command group (root included) and every command of the real tree,
// walked so that a new one is covered when it is added: an unknown command,
// an unknown flag, stray arguments and a group run alone are usage errors
// (exit 2) naming what was wrong, with the op id and a hint (cobra's
// suggestion where it has one), in text and in JSON, and no command's work
// starts.
func TestStrictCommandLine(t *testing.T) {
	marker := isolateCLI(t)
	var groups, leaves []*cobra.Command
	walkCommands((&app{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}).rootCommand(), func(c *cobra.Command) {
		if c.HasSubCommands() {
			groups = append(groups, c)
		} else if c.Name() != "help" {
			leaves = append(leaves, c)
		}
	})
	if len(groups) < 7 || len(leaves) < 20 {
		t.Fatalf("the walk found %d groups and %d commands: too few", len(groups), len(leaves))
	}

	type tc struct {
		name string
		args []string
		want []string // in stderr (text) or in the JSON error's message and hint
		json bool
		help bool // the group's help comes first, on stderr
		// stray: the message names the arguments too many, or (cobra's
		// NoArgs, which the completion commands use) the first one
		stray bool
	}
	var cases []tc
	words := func(c *cobra.Command) []string { return strings.Fields(c.CommandPath())[1:] }
	with := func(c *cobra.Command, more ...string) []string { return append(words(c), more...) }
	for _, g := range groups {
		p := g.CommandPath()
		var sub string
		for _, s := range g.Commands() {
			if s.IsAvailableCommand() {
				sub = s.Name()
				break
			}
		}
		cases = append(cases,
			tc{name: p + " unknown command", args: with(g, "frobnicate"),
				want: []string{`unknown command "frobnicate" for "` + p + `"`, "see: " + p + " --help"}},
			tc{name: p + " typo", args: with(g, sub+"x"),
				want: []string{`unknown command "` + sub + `x" for "` + p + `"`, `did you mean "` + sub + `"`}},
			tc{name: p + " unknown command, json", args: with(g, "frobnicate", "-o", "json"), json: true,
				want: []string{`unknown command "frobnicate" for "` + p + `"`, "see: " + p + " --help"}},
			tc{name: p + " unknown flag", args: with(g, "--frobnicate"),
				want: []string{p + ": unknown flag: --frobnicate"}},
			tc{name: p + " alone", args: words(g), help: true,
				want: []string{p + " needs a command", "see: " + p + " --help"}},
			tc{name: p + " alone, json", args: with(g, "-o", "json"), json: true,
				want: []string{p + " needs a command"}},
		)
	}
	stray := []string{"stray1", "stray2", "stray3", "stray4", "stray5", "stray6", "stray7", "stray8"}
	for _, l := range leaves {
		p := l.CommandPath()
		cases = append(cases,
			tc{name: p + " unknown flag", args: with(l, "--frobnicate"),
				want: []string{p + ": unknown flag: --frobnicate", "see: " + p + " --help"}},
			tc{name: p + " unknown shorthand", args: with(l, "-Z"),
				want: []string{p + ": unknown shorthand flag: 'Z' in -Z"}},
			tc{name: p + " unknown flag, json", args: with(l, "-o", "json", "--frobnicate"), json: true,
				want: []string{p + ": unknown flag: --frobnicate"}},
		)
		if _, ok := variadic[p]; !ok {
			cases = append(cases, tc{name: p + " stray arguments", args: with(l, stray...), stray: true,
				want: []string{p, "see: " + p + " --help"}})
		}
	}
	cases = append(cases,
		tc{name: "help of an unknown topic", args: []string{"help", "frobnicate"},
			want: []string{`unknown help topic "frobnicate" for "banger"`}},
		tc{name: "help of an unknown subtopic", args: []string{"help", "vm", "lst"},
			want: []string{`unknown help topic "lst" for "banger vm"`, `did you mean "list"`}},
		tc{name: "help of a command with arguments", args: []string{"help", "vm", "show", "web"},
			want: []string{`unknown help topic "web" for "banger vm show"`}},
		tc{name: "bad --output", args: []string{"vm", "list", "-o", "yaml"},
			want: []string{`--output "yaml": want text or json`}},
	)

	for _, c := range cases {
		r := runTrapped(c.args...)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Errorf("%s (banger %q): "+format+"\nexit %d\nstdout:\n%s\nstderr:\n%s",
				append(append([]any{c.name, c.args}, args...), r.code, r.stdout, r.stderr)...)
		}
		if r.code != ExitUsage {
			fail("exit %d, want %d", r.code, ExitUsage)
			continue
		}
		if len(r.ran) > 0 {
			fail("reached %v", r.ran)
		}
		if c.json {
			var got struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
					Hint    string `json:"hint"`
					OpID    string `json:"op_id"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				fail("stdout is not a JSON error: %v", err)
				continue
			}
			if got.Error.Code != string(codeUsage) || got.Error.OpID != r.opID || got.Error.Hint == "" {
				fail("JSON error %+v: want code %s, op id %s and a hint", got.Error, codeUsage, r.opID)
			}
			if r.stderr != "" {
				fail("stderr is not empty in JSON mode")
			}
			for _, w := range c.want {
				if !strings.Contains(got.Error.Message+"\n"+got.Error.Hint, w) {
					fail("the JSON error lacks %q", w)
				}
			}
			continue
		}
		if r.stdout != "" {
			fail("stdout is not empty")
		}
		msg := r.stderr
		if c.help {
			i := strings.Index(msg, "\nbanger: ")
			if i < 0 || !strings.Contains(msg[:i], "Usage:\n  "+strings.Join(append([]string{"banger"}, c.args...), " ")+" [command]") {
				fail("want the group's help before the error")
				continue
			}
			msg = msg[i+1:]
		}
		if !strings.HasPrefix(msg, "banger: ") || !strings.Contains(msg, "\n  code:  usage\n") ||
			!strings.Contains(msg, "\n  op id: "+r.opID+"\n") || !strings.Contains(msg, "\n  hint:  ") {
			fail("want the message, code usage, op id %s and a hint", r.opID)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				fail("stderr lacks %q", w)
			}
		}
		if c.stray && !strings.Contains(msg, `"stray8"`) && !strings.Contains(msg, `unknown command "stray1"`) {
			fail("the message does not name the stray arguments")
		}
	}

	// The controls: what is known still works, help exits 0 on stdout.
	for _, args := range [][]string{{"--help"}, {"help"}, {"help", "vm", "ssh-config"}, {"vm", "--help"}, {"vm", "show", "--help"}} {
		if r := runTrapped(args...); r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" || len(r.ran) > 0 {
			t.Errorf("banger %q: exit %d, ran %v\nstdout:\n%s\nstderr:\n%s", args, r.code, r.ran, r.stdout, r.stderr)
		}
	}
	for _, l := range leaves {
		if r := runTrapped(with(l, "--help")...); r.code != 0 || !strings.Contains(r.stdout, "Usage:\n  "+l.CommandPath()) {
			t.Errorf("%s --help: exit %d\n%s%s", l.CommandPath(), r.code, r.stdout, r.stderr)
		}
	}
	for _, args := range [][]string{{"vm", "list"}, {"vm", "ls", "-o", "json"}, {"vm", "show", "web"}, {"vm", "ssh", "web", "--", "uname", "-r"},
		{"vm", "run", "--name", "x", "--", "true"}, {"vm", "ssh-config"}, {"vm", "ssh-config", "web"}, {"image", "import", "--name", "x", "dir"}} {
		r := runTrapped(args...)
		if r.code != 0 || len(r.ran) != 1 {
			t.Errorf("banger %q: exit %d, ran %v\n%s", args, r.code, r.ran, r.stderr)
		}
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("a run tried to start bangerd")
	}
}
