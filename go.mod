module github.com/buildbridge/buildbridge

go 1.26.8
