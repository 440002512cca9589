package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// listenMetrics binds addr for h (a daemon's /metrics and /healthz). serve
// then serves until ctx is done, and returns nil, or what else ended it.
func listenMetrics(addr string, h http.Handler) (serve func(context.Context) error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	return func(ctx context.Context) error {
		go func() {
			<-ctx.Done()
			hs.Close()
		}()
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, nil
}

// runBeside runs main, and serve (if not nil) beside it, until ctx is done
// or either ends, which ends the other; it returns main's error, or else
// serve's.
func runBeside(ctx context.Context, main, serve func(context.Context) error) error {
	if serve == nil {
		return main(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx)
		cancel()
	}()
	err := main(ctx)
	cancel()
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}
