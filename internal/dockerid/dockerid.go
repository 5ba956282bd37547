// Package dockerid is what tartan does with Docker's network, endpoint and
// container IDs beyond keeping them whole.
package dockerid

// Short is the form of a Docker ID in messages, logs and tables: its first
// 12 characters, as docker ps shows it.
func Short(id string) string { return id[:min(12, len(id))] }
