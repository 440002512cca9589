package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// onHangup makes SIGHUP, which would end the process, read again what the
// daemon reloads (and polls for anyway), at once: reload runs on every
// SIGHUP until ctx is done and logs what it refuses itself. what names it in
// the log. With reload nil, SIGHUP is logged and changes nothing. Either
// way a meshfed daemon never stops on SIGHUP (a closed terminal, or a
// service manager's "reload").
func onHangup(ctx context.Context, log *slog.Logger, what string, reload func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if reload == nil {
					log.Info("SIGHUP: nothing is read again; restart to change the configuration")
					continue
				}
				log.Info("SIGHUP: reading " + what + " again")
				reload()
			}
		}
	}()
}
