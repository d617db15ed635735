// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3, etcdmain) at the version
// k8s.io/kubernetes pins, built in the same module so the two share every common dependency
// (one compile of each). Debian's etcd is too old for this Kubernetes release.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
