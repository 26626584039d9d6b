package model

import (
	"fmt"
	"regexp"
)

// Names of images and VMs: a DNS label (VM names become host names and DNS
// names), lowercase, at most 63 characters.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks an image or VM name; kind is "image" or "vm" for the
// message.
func ValidateName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}
