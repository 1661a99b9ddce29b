// Command scapguard-cluster is the local control plane of scapguard's demo and
// tests: one multi-call binary (it links Kubernetes once) that runs etcd
// (embedded), kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
// kube-proxy, kubectl and an aggregated API server for OpenShift's
// image.openshift.io/v1 API.
//
// Usage: scapguard-cluster COMPONENT [flags...], or call it through a link
// named after the component (e.g. kubectl -> scapguard-cluster).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	"github.com/scapguard/scapguard/hack/cluster/imageapi"
)

var components = map[string]func() int{
	"etcd":                    runEtcd,
	"kube-apiserver":          func() int { return cli.Run(apiserverapp.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(cmapp.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(schedulerapp.NewSchedulerCommand()) },
	"kubelet":                 func() int { return cli.Run(kubeletapp.NewKubeletCommand(context.Background())) },
	"kube-proxy":              func() int { return cli.Run(proxyapp.NewProxyCommand()) },
	"image-apiserver":         func() int { return cli.Run(imageapi.NewCommand()) },
	"kubectl":                 runKubectl,
}

func runKubectl() int {
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func usage() int {
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: scapguard-cluster COMPONENT [flags...]\ncomponents: %v\n", names)
	return 2
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok {
		if len(os.Args) < 2 {
			os.Exit(usage())
		}
		name = os.Args[1]
		// Hide the component word from the component's own flag parsing.
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "scapguard-cluster: unknown component %q\n", name)
		os.Exit(usage())
	}
	// cobra reads os.Args[1:], which now holds only the component's flags.
	cobra.EnableCommandSorting = false
	os.Exit(run())
}
