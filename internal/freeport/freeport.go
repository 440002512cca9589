// Package freeport chooses loopback TCP ports for processes whose port must
// be known before they start (the demo's servers and proxies, the
// end-to-end tests'). A port taken from a port-0 listener and released
// comes from the kernel's ephemeral range, where the kernel also hands
// ports to outgoing connections and other port-0 listeners, so another
// process may hold it before the intended one binds it ("address already
// in use"). Port chooses below that range instead, where neither happens,
// checks that the port binds, and never hands one out twice in a process.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// tries bounds the ports Port probes before giving up.
const tries = 200

// Port returns a loopback TCP port that was free a moment ago and that no
// earlier call of this process returned.
func Port() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	low, high := Range()
	for range tries {
		port := low + rand.IntN(high-low)
		if given[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // another process's
		}
		l.Close()
		given[port] = true
		return port, nil
	}
	return 0, errors.New("freeport: no free loopback port below the ephemeral range after 200 tries")
}

// Range is where Port chooses: from 10000 up to the start of the ephemeral
// range (net.ipv4.ip_local_port_range; 32768 if it cannot be read).
func Range() (low, high int) {
	low, high = 10000, 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > low+1000 {
				high = n
			}
		}
	}
	return low, high
}
