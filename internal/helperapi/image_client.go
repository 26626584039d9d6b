package helperapi

import "context"

// Image builds take minutes: give these calls a context without a short
// deadline. A step runs to its end (or its own time limit) even when the
// caller goes away; the next step, or image.discard, waits for it.

// ImageBootstrap runs debootstrap into the scratch tree of p.BuildID.
func (c *Client) ImageBootstrap(ctx context.Context, p ImageBootstrapParams) (ImageStepResult, error) {
	return call[ImageBootstrapParams, ImageStepResult](ctx, c, MethodImageBootstrap, p)
}

// ImageConfigure turns the bootstrapped tree into a banger guest and
// returns its kernel version.
func (c *Client) ImageConfigure(ctx context.Context, p ImageConfigureParams) (ImageConfigureResult, error) {
	return call[ImageConfigureParams, ImageConfigureResult](ctx, c, MethodImageConfigure, p)
}

// ImagePack writes the image's files into p.OutDir, owned by p.UID:p.GID.
func (c *Client) ImagePack(ctx context.Context, p ImagePackParams) (ImagePackResult, error) {
	return call[ImagePackParams, ImagePackResult](ctx, c, MethodImagePack, p)
}

// ImageDiscard removes the scratch tree of buildID; none is not an error.
func (c *Client) ImageDiscard(ctx context.Context, buildID string) (DeleteResult, error) {
	return call[ImageDiscardParams, DeleteResult](ctx, c, MethodImageDiscard, ImageDiscardParams{BuildID: buildID})
}
