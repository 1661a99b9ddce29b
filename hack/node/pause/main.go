// Command pause is the pod sandbox's only process: it holds the pod's namespaces open,
// reaps the zombies of processes that share its PID namespace, and exits on SIGINT or
// SIGTERM. It is the local cluster's own build of the role registry.k8s.io/pause plays
// (that image cannot be pulled here), and is linked statically so its image holds one file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
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
