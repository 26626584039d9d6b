// Command banger is the banger CLI: local microVMs for developers.
// See `banger --help`, README.md and docs/cli.md.
package main

import (
	"os"

	"github.com/banger-dev/banger/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
