module github.com/esper-morph/esper

go 1.26

require (
	github.com/hashicorp/golang-lru/v2 v2.0.7
	github.com/sony/gobreaker/v2 v2.4.0
	gonum.org/v1/gonum v0.17.0
)
