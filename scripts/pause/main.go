// The pod sandbox's pause process for `fleetdispatch dev --runtime containers` (scripts/images.sh builds it
// into localhost/fleet-dispatch-pause:dev, containerd's sandbox_image there), as registry.k8s.io/pause does:
// PID 1 of a pod sharing its PID namespace reaps the orphans handed to it, and INT or TERM ends it at once.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGINT, syscall.SIGTERM)
	for received := range signals {
		if received != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
