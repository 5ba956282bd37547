# A single-node Consul for trying tartan on a few hosts:
#   consul agent -config-file contrib/consul-dev.hcl -bind <this host's IP>
# then on every Docker host: docker plugin set tartan:latest STORE=consul://<that IP>:8500
server           = true
bootstrap_expect = 1
data_dir         = "/var/lib/consul"
client_addr      = "0.0.0.0"
ui_config { enabled = true }
