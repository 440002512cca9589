package cli

import (
	"context"
	"net"
	"net/http"
	"time"
)

// serveMetrics serves h on addr until ctx is done or stop is called; it
// fails only if addr cannot be bound.
func serveMetrics(ctx context.Context, addr string, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	go hs.Serve(ln)
	return cancel, nil
}
