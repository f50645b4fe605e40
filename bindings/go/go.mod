module github.com/unilock/unilock/bindings/go

go 1.19
