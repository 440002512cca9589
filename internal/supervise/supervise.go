// Package supervise holds what meshfed's daemons (server, VirtualMesh
// controller, proxy) share in running, starting and stopping their parts.
package supervise

import (
	"context"
	"time"

	"google.golang.org/grpc"
)

// Every calls f every interval until ctx is done, then returns nil (the
// shape of a daemon's part).
func Every(ctx context.Context, interval time.Duration, f func()) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f()
		}
	}
}

// StopGRPC lets calls in flight on g finish, for at most d, then cuts the
// rest (Watch streams, say, which never finish by themselves).
func StopGRPC(g *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		g.Stop()
		<-done
	}
}
