package server

import (
	"os"
	"testing"

	"github.com/meshfed/meshfed/internal/testpg"
)

// TestMain stops the Postgres server testpg starts for the Postgres
// benchmarks, if any ran; without them nothing is started.
func TestMain(m *testing.M) { os.Exit(testpg.Run(m)) }
