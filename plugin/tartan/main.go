// Command tartan is the tartan plugin process (network + IPAM driver).
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/plugin"
)

func main() {
	socket := flag.String("socket", "/run/docker/plugins/tartan.sock", "unix socket to serve")
	flag.Parse()
	log := logrus.New()
	log.SetOutput(os.Stdout)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := plugin.Run(ctx, *socket, os.Getenv, log); err != nil {
		log.Fatalf("tartan: %v", err)
	}
}
