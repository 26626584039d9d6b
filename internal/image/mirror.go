// Package image is the daemon's side of images: the build pipeline's
// unprivileged steps (kernel extraction, work-seed generation, checksums)
// and the host facts a build needs (the Debian mirror).
package image

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HostMirror returns the Debian mirror this host's apt uses for suite (and
// its security mirror, if listed), read from /etc/apt/sources.list.d/*.sources
// (deb822) and /etc/apt/sources.list. Builds use it when no mirror is
// configured, so they reach whatever mirror this host can reach.
func HostMirror(suite string) (mirror, security string, err error) {
	return hostMirror("/etc/apt", suite)
}

func hostMirror(aptDir, suite string) (mirror, security string, err error) {
	files, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.sources"))
	for _, f := range files {
		m, s := deb822Mirror(f, suite)
		if mirror == "" {
			mirror = m
		}
		if security == "" {
			security = s
		}
	}
	if mirror == "" || security == "" {
		m, s := oneLineMirror(filepath.Join(aptDir, "sources.list"), suite)
		if mirror == "" {
			mirror = m
		}
		if security == "" {
			security = s
		}
	}
	if mirror == "" {
		return "", "", fmt.Errorf("no Debian mirror for %s in %s/sources.list(.d); set image.mirror in the config or pass --mirror", suite, aptDir)
	}
	return mirror, security, nil
}

// deb822Mirror reads stanzas of "Types: deb", "URIs:" and "Suites:".
func deb822Mirror(path, suite string) (mirror, security string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", ""
	}
	for _, stanza := range strings.Split(string(data), "\n\n") {
		fields := map[string][]string{}
		last := ""
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			if last != "" && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) {
				// A continuation line adds to the field above.
				fields[last] = append(fields[last], strings.Fields(line)...)
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				last = ""
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.Fields(v)
		}
		if !contains(fields["types"], "deb") || len(fields["uris"]) == 0 {
			continue
		}
		uri := fields["uris"][0]
		if contains(fields["suites"], suite) && mirror == "" {
			mirror = uri
		}
		if contains(fields["suites"], suite+"-security") && security == "" {
			security = uri
		}
	}
	return mirror, security
}

// oneLineMirror reads "deb URI SUITE COMPONENTS" lines.
func oneLineMirror(path, suite string) (mirror, security string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 3 || fl[0] != "deb" {
			continue
		}
		i := 1
		if strings.HasPrefix(fl[1], "[") { // options
			for i < len(fl) && !strings.HasSuffix(fl[i], "]") {
				i++
			}
			i++
		}
		if i+1 >= len(fl) {
			continue
		}
		uri, s := fl[i], fl[i+1]
		if s == suite && mirror == "" {
			mirror = uri
		}
		if s == suite+"-security" && security == "" {
			security = uri
		}
	}
	return mirror, security
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
