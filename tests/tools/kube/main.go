// Command kube is one binary holding the Kubernetes components stepchain's tests run:
// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, all from k8s.io/kubernetes.
// One binary means one link instead of four on a small machine. It picks the component from the
// name it is called by (a link named kube-apiserver) or from its first argument
// (kube apiserver --etcd-servers=...).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones, as cmd/kube-apiserver and cmd/kube-controller-manager do

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]func() *cobra.Command{
	"apiserver":          apiserver.NewAPIServerCommand,
	"controller-manager": controllermanager.NewControllerManagerCommand,
	"scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	name := strings.TrimPrefix(filepath.Base(os.Args[0]), "kube-")
	if name == "kube" || name == "main" {
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: kube apiserver|controller-manager|scheduler|kubectl [flags]")
			os.Exit(2)
		}
		name = strings.TrimPrefix(os.Args[1], "kube-")
		os.Args = append([]string{"kube-" + name}, os.Args[2:]...)
	}
	if name == "kubectl" || name == "ctl" {
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	newCommand, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: unknown component %q (apiserver, controller-manager, scheduler, kubectl)\n", name)
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
