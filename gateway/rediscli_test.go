package gateway_test

import (
	"os/exec"
	"strings"
)

// redisCLI runs one command against a test redis-server.
func redisCLI(addr string, args ...string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	return string(out), err
}
