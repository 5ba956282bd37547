// Command tartan is the operator's tool for the tartan plugin (tartan
// status, doctor, hosts, ...) and, as tartan serve, the plugin process
// itself: config.json's entrypoint runs "tartan serve". Without a command it
// prints the commands and changes nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/plugin"
	"github.com/tartan-net/tartan/plugin/cli"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == cli.ServeCommand {
		os.Exit(serve(os.Args[2:], os.Stderr))
	}
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}

// serve runs the plugin: the network and IPAM driver on its socket.
func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("tartan "+cli.ServeCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "/run/docker/plugins/tartan.sock", "unix socket to serve")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tartan %s takes no arguments (got %q); its settings come from the environment (docker plugin set)\n", cli.ServeCommand, fs.Args())
		return 2
	}
	log := logrus.New()
	log.SetOutput(os.Stdout)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := plugin.Run(ctx, *socket, os.Getenv, log); err != nil {
		log.Errorf("tartan: %v", err)
		return 1
	}
	return 0
}
