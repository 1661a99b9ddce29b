// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses:
// the kubernetes plugin answers cluster.local from the API, and every other name gets
// NXDOMAIN from the template plugin (there is no upstream: no query leaves the node's
// network namespace).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The plugins in CoreDNS's own order (plugin.cfg): a server block runs them in this order.
var directives = []string{"bind", "ready", "health", "errors", "log", "cache", "template", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
