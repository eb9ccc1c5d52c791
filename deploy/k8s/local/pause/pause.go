// The pod sandbox ("pause") process: holds the pod's namespaces, reaps nothing,
// exits on SIGINT/SIGTERM. Built locally so that no image is ever pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
