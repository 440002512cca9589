// Package supervise holds what meshfed's daemons (server, VirtualMesh
// controller) share in starting and stopping their parts.
package supervise

import (
	"time"

	"google.golang.org/grpc"
)

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
