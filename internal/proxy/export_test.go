package proxy

import "time"

// SetAfterFunc replaces the timer of the sidecar's delayed closes; call it
// before Run.
func SetAfterFunc(s *Sidecar, f func(d time.Duration, fn func()) (stop func() bool)) { s.afterFunc = f }
