// Command tartan is the tartan plugin process (network + IPAM driver) and,
// with a subcommand (tartan status, tartan hosts), the operator's client
// of the plugin running on this host.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/plugin"
	"github.com/tartan-net/tartan/plugin/cli"
)

func main() {
	if len(os.Args) > 1 && (cli.Commands[os.Args[1]] != "" || os.Args[1] == "help") {
		os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
	}
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
